"""Plan: the deterministic list of transfers that takes a model from one
layout to another, computed by the C++ planner (csrc/realloc/planner.cpp)."""
from __future__ import annotations

import dataclasses

import torch

import real_ext  # noqa: F401  (registers the ops)
from real_ext.realloc.layout import Layout, LayoutMismatchError


class PlanError(RuntimeError):
    """A plan that does not write every destination element exactly once."""


@dataclasses.dataclass(frozen=True)
class Transfer:
    src_rank: int
    dst_rank: int
    param: str
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def numel(self) -> int:
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])


@dataclasses.dataclass
class Plan:
    src: Layout
    dst: Layout
    tensor: torch.Tensor          # (M, 11) int64, the executor's input (see registration.cpp)
    bytes_moved: int              # sent between different workers
    bytes_lower_bound: int        # what destinations need and do not already hold
    bytes_local: int              # copied within a worker

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.src.dtype).element_size()

    @property
    def transfers(self) -> list[Transfer]:
        names = list(self.src.params)
        return [Transfer(int(r[0]), int(r[1]), names[int(r[2])], (int(r[3]), int(r[4])), (int(r[5]), int(r[6])))
                for r in self.tensor]

    def _per_rank(self, column: int) -> dict[int, int]:
        out: dict[int, int] = {}
        t = self.tensor
        remote = t[:, 0] != t[:, 1]
        sizes = (t[:, 4] - t[:, 3]) * (t[:, 6] - t[:, 5]) * self.element_size
        for rank, size in zip(t[remote, column].tolist(), sizes[remote].tolist()):
            out[rank] = out.get(rank, 0) + size
        return out

    @property
    def send_bytes_per_rank(self) -> dict[int, int]:
        return self._per_rank(0)

    @property
    def recv_bytes_per_rank(self) -> dict[int, int]:
        return self._per_rank(1)

    @property
    def send_balance(self) -> float:
        """max / mean of the bytes each sending worker sends (1.0 is perfect)."""
        sends = list(self.send_bytes_per_rank.values())
        return max(sends) / (sum(sends) / len(sends)) if sends else 1.0

    def verify(self) -> None:
        problem = torch.ops.real_ext.realloc_verify(self.src.params_tensor(), self.src.shards_tensor(),
                                                    self.dst.shards_tensor(), self.tensor)
        if problem:
            raise PlanError(problem)


def plan(src: Layout, dst: Layout, *, split_bytes: int = 1 << 20) -> Plan:
    """Transfers from layout src to layout dst. Pieces larger than split_bytes
    held by several source replicas are split among them to spread the load."""
    if not src.same_model(dst):
        diff = sorted(set(src.params.items()) ^ set(dst.params.items()))[:3] or sorted(src.transposed ^ dst.transposed)[:3]
        raise LayoutMismatchError(f"the layouts describe different models (parameters differ, e.g. {diff}); "
                                  f"build both with Layout.from_config, or both from explicit specs")
    if src.dtype != dst.dtype:
        raise LayoutMismatchError(f"source dtype {src.dtype} differs from destination dtype {dst.dtype}")
    element = torch.empty((), dtype=src.dtype).element_size()
    tensor, stats = torch.ops.real_ext.realloc_plan(src.params_tensor(), src.shards_tensor(), dst.shards_tensor(),
                                                    src.workers_per_node, max(1, split_bytes // element))
    moved, bound, local = (int(x) * element for x in stats)
    return Plan(src, dst, tensor, moved, bound, local)
