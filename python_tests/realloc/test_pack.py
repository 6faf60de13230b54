"""pack / unpack_ (the reallocation staging kernels) against the slicing
reference in real_ext.ref, on CPU and CUDA."""
import numpy as np
import pytest
import torch

from real_ext import ops, ref
from python_tests.conftest import DEVICES


def _boxes(flat_numel, seed, n=17):
    """Random non-overlapping strided boxes inside a flat buffer of flat_numel."""
    rng = np.random.default_rng(seed)
    boxes, buf, start = [], 0, 0
    for _ in range(n):
        rows, cols = int(rng.integers(1, 9)), int(rng.integers(1, 40))
        ld = cols + int(rng.integers(0, 7))
        need = (rows - 1) * ld + cols
        if start + need > flat_numel:
            break
        boxes.append([start, ld, rows, cols, buf])
        buf += rows * cols
        start += need + int(rng.integers(0, 5))
    boxes.append([start, 1, 0, 0, buf])  # an empty box is allowed
    boxes.append([flat_numel + 10, 1, 1, 70000, buf])  # one row longer than a kernel segment, past the others
    return torch.tensor(boxes, dtype=torch.int64)


# (boxes, region they lie in): up to 48 boxes travel in the CUDA kernel's
# parameters, more are copied to the device first; both paths are checked.
BOX_COUNTS = [(17, 3000), (400, 90000)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int8])
@pytest.mark.parametrize("n_boxes,region", BOX_COUNTS)
def test_pack_unpack_round_trip(device, dtype, n_boxes, region):
    flat = (torch.randn(region + 80000) * 50).to(dtype).to(device)
    boxes = _boxes(region, seed=0, n=n_boxes)  # boxes must not overlap: an element written twice races on a GPU
    assert len(boxes) == n_boxes + 2
    packed = ops.pack(flat, boxes)
    assert torch.equal(packed.cpu(), ref.pack(flat.cpu(), boxes))
    target = torch.zeros_like(flat)
    ops.unpack_(target, packed, boxes)
    assert torch.equal(target.cpu(), ref.unpack_(torch.zeros_like(flat).cpu(), packed.cpu(), boxes))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_unpack_wide_rows_at_any_alignment(dtype):
    # The CPU unpack streams rows of 512 bytes and more past the cache (an
    # unaligned head, 64-byte steps, 16-byte steps, a byte tail): rows of
    # 500..1100 bytes starting at every offset mod 16 bytes, against the reference.
    rng = np.random.default_rng(3)
    rows, start, buf = [], 3, 0
    for i in range(40):
        cols = int(rng.integers(500, 1100)) // torch.empty((), dtype=dtype).element_size()
        n_rows = int(rng.integers(1, 4))
        ld = cols + int(rng.integers(0, 9))
        rows.append([start, ld, n_rows, cols, buf])
        buf += n_rows * cols
        start += (n_rows - 1) * ld + cols + i % 16 + 1
    boxes = torch.tensor(rows, dtype=torch.int64)
    packed = (torch.randn(buf) * 50).to(dtype)
    out = ops.unpack_(torch.zeros(start + 64, dtype=dtype), packed, boxes)
    assert torch.equal(out, ref.unpack_(torch.zeros(start + 64, dtype=dtype), packed, boxes))


@pytest.mark.parametrize("device", DEVICES)
def test_pack_into_reused_buffer(device):
    flat = torch.randn(80000, device=device)
    boxes = _boxes(3000, seed=1)
    staging = torch.full((200000,), float("nan"), device=device)
    out = ops.pack(flat, boxes, out=staging)
    n = ref.pack(flat.cpu(), boxes).numel()
    assert out is staging and torch.equal(staging[:n].cpu(), ref.pack(flat.cpu(), boxes))
    assert torch.isnan(staging[n:]).all()  # nothing past the packed part is touched


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n_boxes,region", BOX_COUNTS)
def test_unpack_ema(device, dtype, n_boxes, region):
    flat = torch.randn(region + 80000, dtype=torch.float64).to(dtype).to(device)
    boxes = _boxes(region, seed=2, n=n_boxes)
    update = torch.randn(int((boxes[:, 2] * boxes[:, 3]).sum()), dtype=torch.float64).to(dtype).to(device)
    out = ops.unpack_(flat.clone(), update, boxes, eta=0.25)
    expected = ref.unpack_(flat.cpu().clone(), update.cpu(), boxes, eta=0.25)
    # one rounding of the blend in float32 (bf16: the final cast) against the float64 blend
    tol = {torch.float64: 1e-15, torch.float32: 1e-6, torch.bfloat16: 2e-2}[dtype]
    assert (out.cpu().double() - expected.double()).abs().max() <= tol * 4


def test_bad_boxes():
    flat, box = torch.zeros(100), torch.tensor([[0, 10, 2, 10, 0]])
    with pytest.raises(ValueError, match="reaches past the flat buffer"):
        ops.pack(flat, torch.tensor([[90, 10, 2, 10, 0]]))
    with pytest.raises(ValueError, match="reaches past the staging buffer"):
        ops.pack(flat, box, out=torch.zeros(19))
    with pytest.raises(ValueError, match=r"boxes must be an int64 CPU tensor \(n, 5\)"):
        torch.ops.real_ext.realloc_pack_into(flat, torch.tensor([[0, 10, 2, 10]]), torch.zeros(20))
    with pytest.raises(TypeError, match="buffer dtype"):
        ops.unpack_(flat, torch.zeros(20, dtype=torch.float64), box)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        ops.unpack_(flat, torch.zeros(20), box, eta=1.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_aligned_column_slices(device, dtype):
    """tp-style column halves and head-dim-wide slices of a matrix (rows that
    start and end on 16-byte boundaries: the GPU copies them in 16-byte words)."""
    rows, cols = 96, 512
    flat = torch.randn(rows * cols).to(dtype).to(device)
    halves = torch.tensor([[0, cols, rows, cols // 2, 0], [cols // 2, cols, rows, cols // 2, rows * cols // 2]])
    heads = torch.tensor([[h * 64, cols, rows, 64, h * rows * 64] for h in range(cols // 64)])
    for boxes in (halves, heads):
        packed = ops.pack(flat, boxes)
        assert torch.equal(packed.cpu(), ref.pack(flat.cpu(), boxes))
        target = torch.zeros_like(flat)
        ops.unpack_(target, packed, boxes)
        assert torch.equal(target.cpu(), flat.cpu())
