"""`python -m orchestrator` runs the CLI (used by `orch up --detach` to start the root)."""
import sys

from orchestrator.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
