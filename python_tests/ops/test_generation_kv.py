"""Paged KV-cache ops (kv_cache_append_, decode_attention) against the plain
references (real_ext.ref), on scattered block tables; tolerances derived as in
STYLE.md; every malformed call raises a clear error."""
import os
import re
import subprocess
import sys

import pytest
import torch

from real_ext import ops, ref
from python_tests.conftest import DEVICES, HAS_CUDA, cu_seqlens

DTYPES = {"cpu": [torch.float32, torch.bfloat16], "cuda": [torch.float32, torch.bfloat16, torch.float16]}

# (name, seq_lens, heads_q, heads_kv, head_dim, block_size)
CASES = [
    ("one_token_mha", [1], 4, 4, 32, 16),
    ("block_edges_gqa2", [1, 15, 16, 17, 100], 8, 4, 64, 16),
    ("block_size_1_gqa4_hd80", [1, 7, 64, 33], 8, 2, 80, 1),
    ("gqa8_hd128", [129, 2, 48, 250], 16, 2, 128, 16),
    ("hd256_gqa4", [300, 1, 77], 8, 2, 256, 16),
    ("hd32_bs1_mha", [5, 1, 40], 2, 2, 32, 1),
    # Head rows shorter than the CPU kernel's 32-element chunk, and one chunk + 16.
    ("hd16_gqa2", [33, 1, 17], 4, 2, 16, 16),
    ("hd48_mqa2", [20, 5], 2, 1, 48, 16),
    ("64_seqs_mqa8", [(i * 37) % 200 + 1 for i in range(64)], 8, 1, 64, 16),
    ("group7", [50, 9, 1], 14, 2, 64, 16),
    ("group16_mqa", [40, 3], 16, 1, 64, 16),
    # Few long sequences: on CUDA the keys are split over several blocks.
    ("long_few_seqs", [3000, 1, 777], 4, 1, 128, 16),
    ("long_gqa8_hd64", [1500, 600], 16, 2, 64, 16),
]


def _paged_cache(seq_lens, heads_kv, head_dim, block_size, dtype, device, g):
    """Random caches with spare blocks, and block tables that scatter each
    sequence's blocks over the pool; entries past a sequence's blocks are -1."""
    used = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(used) + 3
    max_blocks = max(used) + 2
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    tables = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32)
    first = 0
    for b, n in enumerate(used):
        tables[b, :n] = perm[first:first + n]
        first += n
    shape = (num_blocks * block_size, heads_kv, head_dim)
    k_cache = torch.randn(shape, generator=g).to(device, dtype)
    v_cache = torch.randn(shape, generator=g).to(device, dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return k_cache, v_cache, tables.to(device), lens


def _decode_inputs(case, dtype, device, seed):
    _, seq_lens, hq, hkv, d, bs = case
    g = torch.Generator().manual_seed(seed)
    k_cache, v_cache, tables, lens = _paged_cache(seq_lens, hkv, d, bs, dtype, device, g)
    q = torch.randn(len(seq_lens), hq, d, generator=g).to(device, dtype)
    return q, k_cache, v_cache, tables, lens, bs


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_decode_matches_reference(case, device):
    for i, dtype in enumerate(DTYPES[device]):
        q, k_cache, v_cache, tables, lens, bs = _decode_inputs(case, dtype, device, seed=100 + i)
        out = ops.decode_attention(q, k_cache, v_cache, tables, lens, bs)
        assert out.dtype == dtype and out.shape == q.shape
        # High-precision reference, and the same reference at the kernel's precision.
        hi = torch.float64 if dtype == torch.float32 else torch.float32
        out_ref = ref.decode_attention(q.to(hi), k_cache.to(hi), v_cache.to(hi), tables, lens, bs)
        out_pt = ref.decode_attention(q, k_cache, v_cache, tables, lens, bs)
        floor = 1e-6 * max(1.0, out_ref.abs().max().item())
        assert _max_err(out, out_ref) <= 2 * _max_err(out_pt, out_ref) + floor, dtype
        # Trusted ids (no host copy on CUDA; the keys split for the table's capacity): as accurate.
        trusted = ops.decode_attention(q, k_cache, v_cache, tables, lens, bs, check_ids=False)
        assert _max_err(trusted, out_ref) <= 2 * _max_err(out_pt, out_ref) + floor, dtype


@pytest.mark.parametrize("device", DEVICES)
def test_append_then_decode_matches_packed_attention(device):
    # Prefill three sequences into an empty paged cache with kv_cache_append_,
    # then decode: the answer is non-causal attention over the packed keys.
    g = torch.Generator().manual_seed(5)
    lengths, hq, hkv, d, bs = [37, 1, 80], 8, 2, 64, 16
    k_cache, v_cache, tables, lens = _paged_cache(lengths, hkv, d, bs, torch.float32, device, g)
    k_cache.zero_(), v_cache.zero_()
    k = torch.randn(sum(lengths), hkv, d, generator=g).to(device)
    v = torch.randn(sum(lengths), hkv, d, generator=g).to(device)
    slots = torch.cat([tables[b, torch.arange(n, device=device) // bs].long() * bs + torch.arange(n, device=device) % bs
                       for b, n in enumerate(lengths)])
    ops.kv_cache_append_(k_cache, v_cache, k, v, slots)
    q = torch.randn(len(lengths), hq, d, generator=g).to(device)
    out = ops.decode_attention(q, k_cache, v_cache, tables, lens, bs, softmax_scale=0.2)
    cu_k = cu_seqlens(lengths, device)
    cu_q = torch.arange(len(lengths) + 1, dtype=torch.int32, device=device)
    expected = ref.varlen_attention(q.double(), k.double(), v.double(), cu_q, cu_k, 1, max(lengths), causal=False,
                                    softmax_scale=0.2)
    assert _max_err(out, expected) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_decode_softmax_scale_and_empty_batch(device):
    q, k_cache, v_cache, tables, lens, bs = _decode_inputs(CASES[1], torch.float32, device, seed=7)
    default = ops.decode_attention(q, k_cache, v_cache, tables, lens, bs)
    explicit = ops.decode_attention(q, k_cache, v_cache, tables, lens, bs, softmax_scale=q.shape[-1] ** -0.5)
    assert torch.equal(default, explicit)
    scaled = ops.decode_attention(q, k_cache, v_cache, tables, lens, bs, softmax_scale=0.3)
    expected = ref.decode_attention(q.double(), k_cache.double(), v_cache.double(), tables, lens, bs,
                                    softmax_scale=0.3)
    assert _max_err(scaled, expected) < 1e-5
    empty = ops.decode_attention(q[:0], k_cache, v_cache, tables[:0], lens[:0], bs)
    assert empty.shape == (0,) + q.shape[1:]


@pytest.mark.parametrize("device", DEVICES)
def test_decode_strided_and_unaligned_q(device):
    q, k_cache, v_cache, tables, lens, bs = _decode_inputs(CASES[3], torch.bfloat16, device, seed=9)
    expected = ops.decode_attention(q, k_cache, v_cache, tables, lens, bs)
    strided = q.transpose(0, 1).contiguous().transpose(0, 1)
    unaligned = torch.cat([q.new_zeros(1), q.flatten()])[1:].view(q.shape)
    for variant in (strided, unaligned):
        assert torch.equal(ops.decode_attention(variant, k_cache, v_cache, tables, lens, bs), expected)


def test_decode_portable_cpu_path():
    # On CPUs with AVX512-BF16 a bfloat16 cache's scores take vdpbf16ps (the
    # cases above); the widening path serves the other CPUs: run it too.
    code = (
        "import torch\n"
        "from python_tests.ops.test_generation_kv import CASES, _decode_inputs, _max_err\n"
        "from real_ext import ops, ref\n"
        "names = ('block_edges_gqa2', 'block_size_1_gqa4_hd80', 'group7', 'hd16_gqa2', 'hd48_mqa2')\n"
        "for case in [c for c in CASES if c[0] in names]:\n"
        "    q, k, v, tables, lens, bs = _decode_inputs(case, torch.bfloat16, 'cpu', seed=3)\n"
        "    hi = ref.decode_attention(q.float(), k.float(), v.float(), tables, lens, bs)\n"
        "    pt = _max_err(ref.decode_attention(q, k, v, tables, lens, bs), hi)\n"
        "    err = _max_err(ops.decode_attention(q, k, v, tables, lens, bs), hi)\n"
        "    assert err <= 2 * pt + 1e-6 * max(1.0, hi.abs().max().item()), (case[0], err, pt)\n"
        "print('ok')\n")
    env = dict(os.environ, REAL_EXT_NO_BF16_DOT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# (name, heads_kv, head_dim): rows of 16-byte multiples, and rows that are not
# (the CUDA kernel falls back to narrower words).
APPEND_SHAPES = [("hd64", 2, 64), ("hd80_mha", 4, 80), ("hd256", 1, 256), ("odd_row_bytes", 1, 3), ("hd20", 3, 20)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", APPEND_SHAPES, ids=[s[0] for s in APPEND_SHAPES])
def test_append_matches_reference(shape, device):
    _, hkv, d = shape
    for i, dtype in enumerate(DTYPES[device]):
        g = torch.Generator().manual_seed(i)
        num_slots, tokens = 96, 37
        k_cache = torch.randn(num_slots, hkv, d, generator=g).to(device, dtype)
        v_cache = torch.randn(num_slots, hkv, d, generator=g).to(device, dtype)
        # k: a transposed view (copied first); v: token rows 3 * hkv * d apart, as
        # in a fused q/k/v projection (read in place), starting one element into
        # its storage (unaligned).
        k = torch.randn(hkv, tokens, d, generator=g).to(device, dtype).transpose(0, 1)
        fused = torch.randn(tokens * 3 * hkv * d + 1, generator=g).to(device, dtype)[1:].view(tokens, 3 * hkv * d)
        v = fused[:, hkv * d:2 * hkv * d].view(tokens, hkv, d)
        slots = torch.randperm(num_slots, generator=g)[:tokens].to(device)
        k_ref, v_ref = k_cache.clone(), v_cache.clone()
        ops.kv_cache_append_(k_cache, v_cache, k, v, slots, check_ids=i % 2 == 0)
        ref.kv_cache_append_(k_ref, v_ref, k, v, slots)
        assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref), dtype
        # No tokens: nothing changes.
        ops.kv_cache_append_(k_cache, v_cache, k[:0], v[:0], slots[:0])
        assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref), dtype


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    g = torch.Generator().manual_seed(11)
    k_cache, v_cache, tables, lens = _paged_cache([5, 20, 1], 2, 32, 4, torch.float32, device, g)
    k = torch.randn(3, 2, 32, generator=g).to(device)
    v = torch.randn(3, 2, 32, generator=g).to(device)
    slots = torch.tensor([7, 0, 12], device=device)
    torch.library.opcheck(torch.ops.real_ext.kv_cache_append_.default, (k_cache, v_cache, k, v, slots))
    q = torch.randn(3, 4, 32, generator=g).to(device)
    torch.library.opcheck(torch.ops.real_ext.decode_attention.default, (q, k_cache, v_cache, tables, lens, 4, 0.125))
    torch.library.opcheck(torch.ops.real_ext.decode_attention.default,
                          (q, k_cache, v_cache, tables, lens, 4, 0.125, False))


# ------------------------------------------------------------------ bad input

def _append_args(**changes):
    args = dict(k_cache=torch.randn(64, 2, 16), v_cache=torch.randn(64, 2, 16), k=torch.randn(5, 2, 16),
                v=torch.randn(5, 2, 16), slots=torch.tensor([3, 9, 0, 63, 20]))
    args.update(changes)
    return args


APPEND_BAD = [
    ("cache_2d", lambda: _append_args(k_cache=torch.randn(64, 32)), ValueError, "k_cache must be 3-D"),
    ("cache_shapes_differ", lambda: _append_args(v_cache=torch.randn(32, 2, 16)), ValueError,
     "k_cache and v_cache must have the same shape"),
    ("cache_not_contiguous", lambda: _append_args(k_cache=torch.randn(2, 64, 16).transpose(0, 1),
                                                  v_cache=torch.randn(2, 64, 16).transpose(0, 1)),
     ValueError, "k_cache and v_cache must be contiguous"),
    ("cache_int", lambda: _append_args(k_cache=torch.zeros(64, 2, 16, dtype=torch.int32)), TypeError,
     "k_cache has dtype Int"),
    ("v_cache_dtype", lambda: _append_args(v_cache=torch.randn(64, 2, 16, dtype=torch.bfloat16)), TypeError,
     "v_cache has dtype BFloat16 but k_cache has Float"),
    ("float16_on_cpu", lambda: _append_args(k_cache=torch.randn(64, 2, 16).half(), v_cache=torch.randn(64, 2, 16).half(),
                                            k=torch.randn(5, 2, 16).half(), v=torch.randn(5, 2, 16).half()),
     TypeError, "float16 (on CUDA only)"),
    ("k_2d", lambda: _append_args(k=torch.randn(5, 32)), ValueError, "k must be 3-D"),
    ("kv_shapes_differ", lambda: _append_args(v=torch.randn(4, 2, 16)), ValueError, "k and v must have the same shape"),
    ("row_mismatch", lambda: _append_args(k=torch.randn(5, 2, 8), v=torch.randn(5, 2, 8)), ValueError,
     "k rows (heads_kv, head_dim) = (2, 8) must match the cache's (2, 16)"),
    ("k_dtype", lambda: _append_args(k=torch.randn(5, 2, 16, dtype=torch.bfloat16)), TypeError,
     "k and v must have the cache's dtype"),
    ("slots_int32", lambda: _append_args(slots=torch.tensor([3, 9, 0, 63, 20], dtype=torch.int32)), TypeError,
     "slots must be int64"),
    ("slots_length", lambda: _append_args(slots=torch.tensor([3, 9, 0, 63])), ValueError,
     "slots must be 1-D (tokens,) = (5,)"),
    ("slot_negative", lambda: _append_args(slots=torch.tensor([3, 9, -1, 63, 20])), ValueError,
     "slots[2] = -1 is outside [0, num_slots = 64)"),
    ("slot_too_large", lambda: _append_args(slots=torch.tensor([64, 9, 0, 63, 20])), ValueError,
     "slots[0] = 64 is outside [0, num_slots = 64)"),
]


@pytest.mark.parametrize("make,exc,message", [c[1:] for c in APPEND_BAD], ids=[c[0] for c in APPEND_BAD])
def test_append_bad_input(make, exc, message):
    args = make()
    before = args["k_cache"].clone()
    for check_ids in (True, False):  # the CPU checks the ids even when told to trust them
        with pytest.raises(exc, match=re.escape(message)):
            ops.kv_cache_append_(**args, check_ids=check_ids)
    assert torch.equal(args["k_cache"], before)  # checked before any write


def _decode_args(d=16, **changes):
    # 8 blocks of 4 slots; sequences of 1, 5, 12 tokens use 1, 2, 3 blocks.
    args = dict(q=torch.randn(3, 4, d), k_cache=torch.randn(32, 2, d), v_cache=torch.randn(32, 2, d),
                block_tables=torch.tensor([[6, -1, -1], [0, 3, -1], [1, 7, 2]], dtype=torch.int32),
                seq_lens=torch.tensor([1, 5, 12], dtype=torch.int32), block_size=4)
    args.update(changes)
    return args


def _tables_with(row, col, value):
    t = _decode_args()["block_tables"]
    t[row, col] = value
    return t


DECODE_BAD = [
    ("q_2d", lambda: _decode_args(q=torch.randn(3, 64)), ValueError, "q must be 3-D"),
    ("heads_not_divisible", lambda: _decode_args(q=torch.randn(3, 3, 16)), ValueError,
     "heads_q (q.size(1) = 3) must be a positive multiple of heads_kv (k_cache.size(1) = 2)"),
    ("head_dim_mismatch", lambda: _decode_args(q=torch.randn(3, 4, 32)), ValueError, "head_dim of k_cache (16)"),
    ("head_dim_too_large", lambda: _decode_args(d=264), ValueError, "head_dim must be in 1..256"),
    ("cache_shapes_differ", lambda: _decode_args(v_cache=torch.randn(28, 2, 16)), ValueError,
     "k_cache and v_cache must have the same shape"),
    ("q_dtype", lambda: _decode_args(q=torch.randn(3, 4, 16, dtype=torch.bfloat16)), TypeError,
     "q has dtype BFloat16 but the cache has Float"),
    ("float64", lambda: _decode_args(q=torch.randn(3, 4, 16).double(), k_cache=torch.randn(32, 2, 16).double(),
                                     v_cache=torch.randn(32, 2, 16).double()), TypeError, "k_cache has dtype Double"),
    ("block_tables_int64", lambda: _decode_args(block_tables=_decode_args()["block_tables"].long()), TypeError,
     "block_tables must be int32"),
    ("seq_lens_int64", lambda: _decode_args(seq_lens=torch.tensor([1, 5, 12])), TypeError, "seq_lens must be int32"),
    ("block_tables_1d", lambda: _decode_args(block_tables=torch.zeros(9, dtype=torch.int32)), ValueError,
     "block_tables must be 2-D (batch, max_blocks)"),
    ("block_tables_batch", lambda: _decode_args(block_tables=torch.zeros(2, 3, dtype=torch.int32)), ValueError,
     "with batch = q.size(0) = 3, got shape [2, 3]"),
    ("seq_lens_batch", lambda: _decode_args(seq_lens=torch.tensor([1, 5], dtype=torch.int32)), ValueError,
     "seq_lens must be 1-D (batch,)"),
    ("seq_len_zero", lambda: _decode_args(seq_lens=torch.tensor([0, 5, 12], dtype=torch.int32)), ValueError,
     "seq_lens[0] = 0 is outside [1, max_blocks * block_size = 12]"),
    ("seq_len_too_long", lambda: _decode_args(seq_lens=torch.tensor([1, 5, 13], dtype=torch.int32)), ValueError,
     "seq_lens[2] = 13 is outside [1, max_blocks * block_size = 12]"),
    ("block_id_negative", lambda: _decode_args(block_tables=_tables_with(1, 1, -1)), ValueError,
     "block_tables[1, 1] = -1 is outside [0, num_blocks = 8)"),
    ("block_id_too_large", lambda: _decode_args(block_tables=_tables_with(2, 2, 8)), ValueError,
     "block_tables[2, 2] = 8 is outside [0, num_blocks = 8)"),
    ("block_size_zero", lambda: _decode_args(block_size=0), ValueError, "block_size must be >= 1, got 0"),
    ("slots_not_multiple", lambda: _decode_args(k_cache=torch.randn(30, 2, 16), v_cache=torch.randn(30, 2, 16)),
     ValueError, "num_slots (k_cache.size(0) = 30) must be a multiple of block_size = 4"),
    ("cache_not_contiguous", lambda: _decode_args(k_cache=torch.randn(2, 32, 16).transpose(0, 1),
                                                  v_cache=torch.randn(2, 32, 16).transpose(0, 1)),
     ValueError, "must be contiguous"),
]


@pytest.mark.parametrize("make,exc,message", [c[1:] for c in DECODE_BAD], ids=[c[0] for c in DECODE_BAD])
def test_decode_bad_input(make, exc, message):
    for check_ids in (True, False):  # the CPU checks the ids even when told to trust them
        with pytest.raises(exc, match=re.escape(message)):
            ops.decode_attention(**make(), check_ids=check_ids)


def test_decode_ignores_unused_table_entries():
    # Entries past a sequence's last block may hold anything (here -1 and 10**6).
    args = _decode_args()
    out = ops.decode_attention(**args)
    args["block_tables"] = torch.where(args["block_tables"] < 0, 10 ** 6, args["block_tables"])
    assert torch.equal(ops.decode_attention(**args), out)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_limits():
    args = {k: v.cuda() if torch.is_tensor(v) else v for k, v in _decode_args().items()}
    with pytest.raises(ValueError, match="seq_lens is on cpu but q is on cuda"):
        ops.decode_attention(**{**args, "seq_lens": args["seq_lens"].cpu()})
    with pytest.raises(ValueError, match="head_dim must be a multiple of 8"):
        ops.decode_attention(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in _decode_args(d=20).items()})
    pool = torch.randn(32 * 2 * 16 + 1, device="cuda")
    with pytest.raises(ValueError, match="16-byte aligned"):
        ops.decode_attention(**{**args, "k_cache": pool[1:].view(32, 2, 16)})
    append = {k: v.cuda() for k, v in _append_args().items()}
    with pytest.raises(ValueError, match="slots is on cpu but k_cache is on cuda"):
        ops.kv_cache_append_(**{**append, "slots": append["slots"].cpu()})
    with pytest.raises(ValueError, match=re.escape("slots[0] = 64 is outside")):
        ops.kv_cache_append_(**{**append, "slots": torch.tensor([64, 9, 0, 63, 20], device="cuda")})
