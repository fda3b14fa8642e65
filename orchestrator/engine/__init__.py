"""engine: what runs in every supervisor process (event loop, supervisor, its one-at-a-time
operations, restart pacing, reload acknowledgements, slots, start and stop sequences, parent
and child side of a node process and their watch in the loop, node states, the messages
supervisors exchange and their uplink, output, OS primitives).
Imports policy, spec and below; never root or cli."""
