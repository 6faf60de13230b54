"""Staging kernels of the reallocation engine: gather strided boxes of a flat
buffer into one contiguous buffer, and scatter them back (optionally blending)."""
import torch

_pack_into = torch.ops.real_ext.realloc_pack_into
_unpack = torch.ops.real_ext.realloc_unpack_


def pack(flat: torch.Tensor, boxes: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate the boxes of ``flat``, row by row, into a new buffer (or the
    front of ``out``). boxes: int64 CPU (n, 5) [offset, ld, rows, cols, buffer_offset]."""
    buffer = out
    if buffer is None:
        total = int((boxes[:, 2] * boxes[:, 3] + boxes[:, 4]).max()) if boxes.numel() else 0
        buffer = torch.empty(total, dtype=flat.dtype, device=flat.device)
    _pack_into(flat, boxes, buffer)
    return buffer


def unpack_(flat: torch.Tensor, buffer: torch.Tensor, boxes: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """Write ``buffer`` back into the boxes of ``flat`` in place:
    ``flat = eta * buffer + (1 - eta) * flat`` (eta = 1: a copy). Returns flat."""
    _unpack(flat, buffer, boxes, float(eta))
    return flat


@torch.library.register_fake("real_ext::realloc_pack_into")
def _pack_into_fake(flat, boxes, buffer):
    return None


@torch.library.register_fake("real_ext::realloc_unpack_")
def _unpack_fake(flat, buffer, boxes, eta):
    return None
