"""Reference pack/unpack: Python slicing, box by box."""
import torch


def _view(flat, offset, ld, rows, cols):
    return flat[offset:offset + (rows - 1) * ld + cols].as_strided((rows, cols), (ld, 1))


def pack(flat, boxes, out=None):
    parts = [_view(flat, o, ld, r, c).reshape(-1) for o, ld, r, c, _ in boxes.tolist() if r and c]
    packed = torch.cat(parts) if parts else flat[:0].clone()
    if out is None:
        return packed
    out[:packed.numel()] = packed
    return out


def unpack_(flat, buffer, boxes, eta=1.0):
    for o, ld, r, c, b in boxes.tolist():
        if r and c:
            view = _view(flat, o, ld, r, c)
            new = buffer[b:b + r * c].view(r, c)
            view.copy_(new if eta == 1.0 else (eta * new.double() + (1 - eta) * view.double()).to(flat.dtype))
    return flat
