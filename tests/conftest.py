"""Test configuration: the orch pytest helpers, and no stray installed plugins."""
import os

os.environ["ORCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"

pytest_plugins = ["orchestrator.testing"]
