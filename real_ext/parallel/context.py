"""ParallelContext: the process groups of one ParallelLayout, as seen by one rank.

``ParallelContext.create(layout)`` is collective over the default process
group: every rank of the world calls it, in the same order, also ranks outside
the mesh (torch.distributed.new_group requires that). A single-rank layout
needs no process group at all.
"""
from __future__ import annotations

import dataclasses

import torch.distributed as dist

from real_ext.parallel.layout import Coord, ParallelLayout


@dataclasses.dataclass
class ParallelContext:
    layout: ParallelLayout
    rank: int
    coord: Coord | None                      # None: this rank is outside the mesh
    tp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None
    pp_group: dist.ProcessGroup | None = None
    model_group: dist.ProcessGroup | None = None
    mesh_group: dist.ProcessGroup | None = None
    embed_group: dist.ProcessGroup | None = None
    kv_group: dist.ProcessGroup | None = None
    kv_replication: int = 1

    @staticmethod
    def single() -> "ParallelContext":
        layout = ParallelLayout.single()
        return ParallelContext(layout, 0, layout.coord(0))

    @staticmethod
    def create(layout: ParallelLayout, kv_replication: int = 1) -> "ParallelContext":
        """kv_replication: how many tp ranks share each kv head (tp / num_kv_heads
        when tp exceeds the kv heads, else 1); their kv gradients are summed."""
        if layout.size == 1 and not dist.is_initialized():
            return ParallelContext(layout, layout.mesh[0], layout.coord(layout.mesh[0]))
        rank = dist.get_rank()
        world = dist.get_world_size()
        if max(layout.mesh) >= world:
            raise ValueError(f"mesh {list(layout.mesh)} names ranks outside the world of {world} processes")
        coord = layout.coord(rank) if rank in layout else None
        ctx = ParallelContext(layout, rank, coord, kv_replication=kv_replication)
        for kind, groups in layout.all_groups(kv_replication).items():
            for ranks in groups:
                group = dist.new_group(ranks) if len(ranks) > 1 else None
                if rank in ranks:
                    setattr(ctx, f"{kind}_group", group)
        return ctx

    @property
    def is_member(self) -> bool:
        return self.coord is not None

    @property
    def tp(self) -> int:
        return self.layout.tp

    @property
    def pp(self) -> int:
        return self.layout.pp

    @property
    def dp(self) -> int:
        return self.layout.dp

    @property
    def is_first_stage(self) -> bool:
        return self.coord.pp == 0

    @property
    def is_last_stage(self) -> bool:
        return self.coord.pp == self.layout.pp - 1

    def stage_rank(self, pp: int) -> int:
        """Global rank of the same (dp, tp) position in pipeline stage pp."""
        return self.layout.rank(pp, self.coord.dp, self.coord.tp)
