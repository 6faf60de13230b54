"""Running a plan (every worker of the group calls ``execute``), and moving a
worker's shard to and from host memory while its model sits idle."""
from __future__ import annotations

import torch
import torch.distributed as dist

from real_ext.realloc.layout import LayoutMismatchError
from real_ext.realloc.plan import Plan

DEFAULT_MAX_BUFFER_BYTES = 256 << 20


def execute(plan: Plan, src_buffer: torch.Tensor | None, dst_buffer: torch.Tensor | None, group=None, *,
            max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES, eta: float = 1.0) -> int:
    """Move parameters as the plan says (dst_buffer is filled in place); returns
    the staging bytes this rank used, at most max_buffer_bytes.

    Called on every rank of ``group`` (default: the world), whose ranks are the
    ranks the layouts name. A rank outside the source (destination) mesh passes
    None as src_buffer (dst_buffer). Extra memory stays under max_buffer_bytes;
    on the CPU that staging memory is kept for the next call (a process holds
    at most the last call's max_buffer_bytes of it per dtype).
    eta < 1 blends instead of copying: dst = eta * src + (1 - eta) * dst (an EMA
    of the source, e.g. for an EMA reference model). All checks run before any
    communication starts.
    """
    group = group if group is not None else dist.group.WORLD
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    named = set(plan.src.ranks) | set(plan.dst.ranks)
    if max(named) >= size:
        raise LayoutMismatchError(f"the layouts name rank {max(named)} but the process group has {size} ranks")
    for layout, buffer, name in ((plan.src, src_buffer, "src_buffer"), (plan.dst, dst_buffer, "dst_buffer")):
        if rank in layout.shards and layout.numel(rank):
            if buffer is None:
                raise LayoutMismatchError(f"rank {rank} is in the {name[:3]} layout's mesh but got {name}=None")
            layout.check_buffer(buffer, rank, name)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    # Two send and two receive buffers per peer (two staged rounds in flight), one for local pieces.
    buffers = 4 * max(size - 1, 1) + 1
    if max_buffer_bytes < buffers * plan.element_size:
        raise ValueError(f"max_buffer_bytes={max_buffer_bytes} is too small to stage anything; give at least "
                         f"{buffers * plan.element_size}")
    return torch.ops.real_ext.realloc_execute(plan.tensor, src_buffer, dst_buffer, group.group_name,
                                              int(max_buffer_bytes), float(eta))


def offload(buffer: torch.Tensor) -> torch.Tensor:
    """A host copy of a flat buffer (pinned when it comes from a GPU, so that
    reload is an asynchronous DMA)."""
    host = torch.empty(buffer.shape, dtype=buffer.dtype, pin_memory=buffer.is_cuda)
    host.copy_(buffer, non_blocking=buffer.is_cuda)
    if buffer.is_cuda:
        torch.cuda.current_stream(buffer.device).synchronize()
    return host


def reload(host: torch.Tensor, device) -> torch.Tensor:
    """The flat buffer back on `device` (asynchronous from pinned memory)."""
    return host.to(device, non_blocking=host.is_pinned())
