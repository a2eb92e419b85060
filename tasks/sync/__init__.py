"""Preview or sync one demographics file for one district: the write path as one unit.

`decision` holds the safeguards as a pure function (what to do with a checked file, and why);
`run` reads what it needs under the district's lock and carries the decision out.
"""

from tasks.sync.decision import Decision, Mode, decide
from tasks.sync.run import (
    SyncOutcome,
    default_requester,
    failure_reason,
    record_preview,
    run_file,
)

__all__ = [
    "Decision",
    "Mode",
    "SyncOutcome",
    "decide",
    "default_requester",
    "failure_reason",
    "record_preview",
    "run_file",
]
