"""spec: a tree file -> frozen values (model and enums, TOML source map, value checks,
validation, worker binding, plugin catalog). Imports only orchestrator.errors and
orchestrator.hookspecs, never the engine."""
