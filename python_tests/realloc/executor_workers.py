"""Per-rank bodies of the executor tests (run by python_tests.distributed)."""
import random

import torch

from real_ext.model import ModelConfig
from real_ext.model.params import param_specs
from real_ext.realloc import Layout, LayoutMismatchError, execute, plan
from python_tests.model.parallel_workers import LLAMA, QWEN2_TIED

STRATEGIES = [(dp, tp, pp) for dp in (1, 2, 4, 8) for tp in (1, 2, 4) for pp in (1, 2, 4) if dp * tp * pp <= 8]
MODELS = [("llama", LLAMA, "lm"), ("llama", LLAMA, "value"), ("qwen2_tied", QWEN2_TIED, "lm")]


def full_state(config: dict, head: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {s.name: torch.randn(s.shape, generator=g)
            for s in param_specs(ModelConfig.from_hf_dict(config), head) if not s.tied_to}


def layout_pairs(n: int = 36, world: int = 8):
    rng = random.Random(7)
    pairs = []
    for i in range(n):
        name, config, head = MODELS[i % len(MODELS)]
        s, d = rng.choice(STRATEGIES), rng.choice(STRATEGIES)
        ns, nd = s[0] * s[1] * s[2], d[0] * d[1] * d[2]
        ranks = list(range(world))
        rng.shuffle(ranks)
        kind = ("equal", "overlap", "disjoint")[i % 3]
        if kind == "disjoint" and ns + nd <= world:
            ms, md = ranks[:ns], ranks[ns:ns + nd]
        elif kind == "equal" and ns == nd:
            ms = md = ranks[:ns]
        else:
            start = min(ns // 2, world - nd)
            ms, md = ranks[:ns], ranks[start:start + nd]
        pairs.append((name, config, head, (sorted(ms), *s), (sorted(md), *d)))
    return pairs


def _buffers(layout, state, rank, fill=None):
    if rank not in layout.shards:
        return None
    return layout.shard_of(state, rank) if fill is None else torch.full((layout.numel(rank),), fill)


def matches(layout, buf, state, rank) -> bool:
    """buf equals the layout's slices of state on every element of every box
    (vocab padding rows, outside any box, are nobody's to write: zeroed here)."""
    if buf is None:
        return True
    buf = buf.clone()
    for s in layout.shards[rank]:
        view = buf[s.offset:s.offset + s.numel].view(s.local_shape)
        view[s.rows[1] - s.rows[0]:] = 0
    return torch.equal(buf, layout.shard_of(state, rank))


def pairs_worker(rank, world_size):
    """Every pair moved with a small staging cap; exact equality on every rank."""
    results = []
    for i, (name, config, head, s, d) in enumerate(layout_pairs()):
        state = full_state(config, head, seed=i)
        src, dst = Layout.from_config(config, *s, head=head), Layout.from_config(config, *d, head=head)
        p = plan(src, dst)
        cap = 4096 + 4 * i
        dst_buf = _buffers(dst, state, rank, fill=float("nan"))
        staged = execute(p, _buffers(src, state, rank), dst_buf, max_buffer_bytes=cap)
        exact = matches(dst, dst_buf, state, rank)
        results.append((name, head, s, d, exact, staged <= cap))
    return results


def round_trip_worker(rank, world_size):
    """train (dp1 tp2 pp2 on 0-3) -> gen (dp4 tp2 on 0-7) -> train, many times."""
    state = full_state(QWEN2_TIED, "lm", seed=99)
    train = Layout.from_config(QWEN2_TIED, [0, 1, 2, 3], 1, 2, 2)
    gen = Layout.from_config(QWEN2_TIED, list(range(8)), 4, 2, 1)
    to_gen, to_train = plan(train, gen), plan(gen, train)
    buf = _buffers(train, state, rank)
    for _ in range(10):
        g = _buffers(gen, state, rank, fill=float("nan"))
        execute(to_gen, buf, g)
        back = _buffers(train, state, rank, fill=float("nan"))
        execute(to_train, g, back)
        buf = back
    return matches(train, buf, state, rank)


def ema_worker(rank, world_size):
    """dst = eta * src + (1 - eta) * dst, for local and remote pieces alike."""
    new, old = full_state(LLAMA, "lm", seed=1), full_state(LLAMA, "lm", seed=2)
    src = Layout.from_config(LLAMA, [0, 1, 2, 3], 2, 2, 1)
    dst = Layout.from_config(LLAMA, [2, 3, 4, 5], 1, 2, 2)
    dst_buf = _buffers(dst, old, rank)
    execute(plan(src, dst), _buffers(src, new, rank), dst_buf, eta=0.3)
    if dst_buf is None:
        return 0.0
    blended = {k: 0.3 * new[k] + 0.7 * old[k] for k in new}
    return (dst_buf - dst.shard_of(blended, rank)).abs().max().item()


def bad_input_worker(rank, world_size):
    """Each bad call must fail on every rank before any communication."""
    state = full_state(LLAMA, "lm", seed=0)
    a = Layout.from_config(LLAMA, [0, 1], 1, 2, 1)
    messages = []
    calls = [
        lambda: execute(plan(a, Layout.from_config(LLAMA, [0, 3], 1, 2, 1)), a.shard_of(state, rank), None),
        lambda: execute(plan(a, a), a.shard_of(state, rank)[:-1], a.shard_of(state, rank)),
        lambda: execute(plan(a, a), a.shard_of(state, rank).double(), a.shard_of(state, rank)),
        lambda: execute(plan(a, a), a.shard_of(state, rank), None),
    ]
    for call in calls:
        try:
            call()
            messages.append(None)
        except LayoutMismatchError as e:
            messages.append(str(e))
    return messages
