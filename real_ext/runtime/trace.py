"""Chrome-trace JSON (open in Perfetto or chrome://tracing): one row per
worker, one span per MFC run, data transfer, reallocation, free, offload."""
from __future__ import annotations

import json
import os


class Trace:
    def __init__(self):
        self.events: list[dict] = []
        self.t0: float | None = None

    def add(self, worker: int, spans) -> None:
        for kind, name, start, end in spans:
            if self.t0 is None:
                self.t0 = start
            self.events.append({"name": name, "cat": kind, "ph": "X", "pid": 0, "tid": worker,
                                "ts": (start - self.t0) * 1e6, "dur": max(end - start, 0.0) * 1e6})

    def write(self, path: str) -> None:
        workers = sorted({e["tid"] for e in self.events})
        meta = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": w, "args": {"name": f"worker {w}"}}
                for w in workers]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"traceEvents": meta + self.events, "displayTimeUnit": "ms"}, f)
        os.replace(tmp, path)
