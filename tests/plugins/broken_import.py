"""Test plugin that cannot be imported: loading it must fail with its name in the message."""
from orchestrator import hookimpl

import orch_tests_no_such_module  # noqa: F401  (the point of this file)


@hookimpl
def orch_workers():
    return {}
