"""The messages between the master and the model workers.

The master numbers every operation it issues and sends it to its
participants in that order; each worker executes what it receives in order.
All operations that involve several workers (collectives inside an MFC's mesh,
parameter reallocation, data transfer) therefore happen in one global order on
every worker, which is what keeps them from deadlocking; workers with no
operation in common run at the same time.
"""
from __future__ import annotations

import dataclasses
from typing import Any

RUN, TRANSFER, REALLOC, FREE, OFFLOAD, RELOAD, CLEAR, SAVE, SAVE_STATE, LOAD_STATE, SHUTDOWN = (
    "run", "transfer", "realloc", "free", "offload", "reload", "clear", "save", "save_state", "load_state",
    "shutdown")


@dataclasses.dataclass
class Op:
    id: int
    kind: str
    name: str                           # what the trace shows (the MFC name for runs)
    participants: tuple[int, ...]
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Reply:
    op_id: int
    worker: int
    ok: bool
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""                     # the traceback when not ok
    spans: list = dataclasses.field(default_factory=list)   # trace events (see trace.py)
