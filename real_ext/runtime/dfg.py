"""The dataflow graph: MFCs as nodes, an edge wherever one MFC's output key is
another's input. Keys nobody produces come from the dataset."""
from __future__ import annotations

import dataclasses

from real_ext.runtime.spec import AllocationError, MFCSpec


@dataclasses.dataclass
class DFG:
    mfcs: list[MFCSpec]                  # in a topological order (ties: definition order)
    producer: dict[str, str]             # key -> name of the MFC that produces it
    dataset_keys: set[str]

    def parents(self, mfc: MFCSpec) -> list[str]:
        return sorted({self.producer[k] for k in mfc.inputs + mfc.meta_inputs if k in self.producer})

    @staticmethod
    def build(mfcs: list[MFCSpec]) -> "DFG":
        producer: dict[str, str] = {}
        for m in mfcs:
            for key in m.outputs:
                if key in producer:
                    raise AllocationError(f"key {key!r} is produced by both {producer[key]!r} and {m.name!r}")
                producer[key] = m.name
        dataset_keys = {k for m in mfcs for k in m.inputs if k not in producer}
        for m in mfcs:
            missing = [k for k in m.meta_inputs if k not in producer]
            if missing:
                raise AllocationError(f"MFC {m.name!r} waits for keys {missing} that no MFC produces")
        by_name = {m.name: m for m in mfcs}
        order, done, visiting = [], set(), set()

        def visit(name):
            if name in done:
                return
            if name in visiting:
                raise AllocationError(f"the dataflow graph has a cycle through MFC {name!r}")
            visiting.add(name)
            for key in by_name[name].inputs + by_name[name].meta_inputs:
                if key in producer:
                    visit(producer[key])
            visiting.discard(name)
            done.add(name)
            order.append(by_name[name])

        for m in mfcs:
            visit(m.name)
        return DFG(order, producer, dataset_keys)
