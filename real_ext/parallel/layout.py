"""ParallelLayout: a device mesh and a (dp, tp, pp) strategy on it.

Workers are global ranks. Inside a mesh the coordinate order is (pp, dp, tp)
with tp fastest (Megatron's order):
``mesh_index = (pp_rank * dp + dp_rank) * tp + tp_rank``.
Plain data: no process group is needed to build or query one.
"""
from __future__ import annotations

import dataclasses


class LayoutError(ValueError):
    """A mesh/strategy combination that cannot work."""


@dataclasses.dataclass(frozen=True)
class Coord:
    pp: int
    dp: int
    tp: int


@dataclasses.dataclass(frozen=True)
class ParallelLayout:
    mesh: tuple[int, ...]
    dp: int = 1
    tp: int = 1
    pp: int = 1

    def __post_init__(self):
        object.__setattr__(self, "mesh", tuple(int(r) for r in self.mesh))
        for name in ("dp", "tp", "pp"):
            if getattr(self, name) < 1:
                raise LayoutError(f"{name}={getattr(self, name)} must be >= 1")
        if self.dp * self.tp * self.pp != len(self.mesh):
            raise LayoutError(f"dp*tp*pp = {self.dp}*{self.tp}*{self.pp} = {self.dp * self.tp * self.pp} must equal "
                              f"the mesh size {len(self.mesh)} (mesh {list(self.mesh)})")
        if len(set(self.mesh)) != len(self.mesh) or min(self.mesh) < 0:
            raise LayoutError(f"mesh ranks must be distinct and non-negative, got {list(self.mesh)}")

    @staticmethod
    def single(rank: int = 0) -> "ParallelLayout":
        return ParallelLayout((rank,), 1, 1, 1)

    @property
    def size(self) -> int:
        return len(self.mesh)

    def __contains__(self, rank: int) -> bool:
        return rank in self.mesh

    def coord(self, rank: int) -> Coord:
        if rank not in self.mesh:
            raise LayoutError(f"rank {rank} is not in the mesh {list(self.mesh)}")
        i = self.mesh.index(rank)
        return Coord(pp=i // (self.dp * self.tp), dp=(i // self.tp) % self.dp, tp=i % self.tp)

    def rank(self, pp: int, dp: int, tp: int) -> int:
        return self.mesh[(pp * self.dp + dp) * self.tp + tp]

    def tp_group(self, pp: int, dp: int) -> list[int]:
        return [self.rank(pp, dp, t) for t in range(self.tp)]

    def dp_group(self, pp: int, tp: int) -> list[int]:
        return [self.rank(pp, d, tp) for d in range(self.dp)]

    def pp_group(self, dp: int, tp: int) -> list[int]:
        return [self.rank(p, dp, tp) for p in range(self.pp)]

    def model_group(self, dp: int) -> list[int]:
        """Every rank holding a part of one model replica (all tp and pp ranks of one dp rank)."""
        return [self.rank(p, dp, t) for p in range(self.pp) for t in range(self.tp)]

    def all_groups(self, kv_replication: int = 1) -> dict[str, list[list[int]]]:
        """Every group of the layout, in a fixed order: tp, dp, pp, model (one
        replica), mesh; embed (first and last stage, for tied embeddings) when
        pp > 1; kv (tp ranks sharing a replicated kv head) when kv_replication > 1."""
        groups = {
            "tp": [self.tp_group(p, d) for p in range(self.pp) for d in range(self.dp)],
            "dp": [self.dp_group(p, t) for p in range(self.pp) for t in range(self.tp)],
            "pp": [self.pp_group(d, t) for d in range(self.dp) for t in range(self.tp)],
            "model": [self.model_group(d) for d in range(self.dp)],
            "mesh": [list(self.mesh)],
        }
        if self.pp > 1:
            groups["embed"] = [[self.rank(0, d, t), self.rank(self.pp - 1, d, t)]
                               for d in range(self.dp) for t in range(self.tp)]
        if kv_replication > 1:
            if self.tp % kv_replication:
                raise LayoutError(f"kv_replication={kv_replication} must divide tp={self.tp}")
            groups["kv"] = [tp_group[i:i + kv_replication] for tp_group in groups["tp"]
                            for i in range(0, self.tp, kv_replication)]
        return groups
