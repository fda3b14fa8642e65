"""engine: what runs in every supervisor process (event loop, supervisor, slots, start and
stop sequences, parent and child side of a node process, uplink, output, OS primitives).
Imports policy, spec and below; never root or cli."""
