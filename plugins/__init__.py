"""Worker plugins bundled with orch (imported as `orch_plugins`)."""
