"""Parameter reallocation between layouts with gloo processes on 127.0.0.1.

For each layout pair, in the same run: (a) ours: the precomputed plan carried
out by the C++ executor; (b) the naive path other systems take: gather the full
model on one rank, broadcast it, each destination cuts its shard; (c) raw gloo
send/recv of exactly our plan's per-pair byte volumes (bytes_lower_bound in
all), posted all at once: the transport's floor for this traffic; (d) raw
plus one contiguous copy, on each worker, of the bytes it already holds: the
least work any executor does, since those pieces must still be copied from
the source buffer into the destination buffer. Also the
bytes a ReaLHF-style plan would move (model of it: every destination shard
sent whole, no reuse of what a worker already holds, replicated parameters
received once per source tp rank).

    python bench/bench_realloc.py              # ~400 MB float32 LLaMA, 4 and 8 workers
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import emit, machine, markdown_table  # noqa: E402

from python_tests.distributed import run_workers  # noqa: E402
from real_ext.model import ModelConfig  # noqa: E402
from real_ext.model.params import REPLICATED, param_specs  # noqa: E402
from real_ext.realloc import Layout, execute, plan  # noqa: E402

CONFIG = dict(model_type="llama", vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
              num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=False)
# (name, world, src (mesh, dp, tp, pp), dst (mesh, dp, tp, pp))
PAIRS = [
    ("train dp1 tp2 pp2 -> gen dp4", 4, (range(4), 1, 2, 2), (range(4), 4, 1, 1)),
    ("gen dp4 -> train dp1 tp2 pp2", 4, (range(4), 4, 1, 1), (range(4), 1, 2, 2)),
    ("disjoint half tp4 -> all dp4 tp2", 8, (range(4), 1, 4, 1), (range(8), 4, 2, 1)),
    ("train dp2 tp2 pp2 -> gen dp2 tp4", 8, (range(8), 2, 2, 2), (range(8), 2, 4, 1)),
]


def layouts(pair):
    _, _, s, d = pair
    return (Layout.from_config(CONFIG, list(s[0]), *s[1:]), Layout.from_config(CONFIG, list(d[0]), *d[1:]))


def full_state():
    g = torch.Generator().manual_seed(0)
    return {s.name: torch.randn(s.shape, generator=g) for s in param_specs(ModelConfig.from_hf_dict(CONFIG))}


def realhf_bytes(src: Layout, dst: Layout) -> int:
    """The ReaLHF-style volume (see the module docstring)."""
    o_proj = "model.layers.0.self_attn.o_proj.weight"  # row-parallel: one distinct box per source tp rank
    src_tp = len({(s.rows, s.cols) for r in src.ranks for s in src.shards[r] if s.param == o_proj})
    replicated = {s.name for s in param_specs(ModelConfig.from_hf_dict(CONFIG)) if s.split == REPLICATED}
    total = 0
    for rank in dst.ranks:
        for s in dst.shards[rank]:
            area = (s.rows[1] - s.rows[0]) * (s.cols[1] - s.cols[0])
            total += area * 4 * (src_tp if s.param in replicated else 1)
    return total


def timed(fns, repeats):
    """Median seconds of each function (the slowest rank's time between
    barriers), the functions taking turns so that drift in this machine's load
    reaches them alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            dist.barrier()
            t = torch.tensor(time.perf_counter() - t0)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            ts.append(float(t))
    return [statistics.median(ts) for ts in times]


def worker(rank, world, pair_index, repeats, max_buffer_bytes):
    pair = PAIRS[pair_index]
    src, dst = layouts(pair)
    state = full_state()
    p = plan(src, dst)
    src_buf = src.shard_of(state, rank) if rank in src.shards else None
    dst_buf = torch.zeros(dst.numel(rank)) if rank in dst.shards else None

    def ours():
        execute(p, src_buf, dst_buf, max_buffer_bytes=max_buffer_bytes)

    ours()
    correct = dst_buf is None or torch.equal(dst_buf, dst.shard_of(state, rank))
    # The part of ours that the raw anchor does not do: copying what a worker already holds.
    local_rows = p.tensor[:, 0] == p.tensor[:, 1]
    local_only = dataclasses.replace(p, tensor=p.tensor[local_rows])
    t_local, = timed([lambda: execute(local_only, src_buf, dst_buf, max_buffer_bytes=max_buffer_bytes)], repeats)

    names = list(src.params)
    sizes = [torch.Size(src.params[n]).numel() for n in names]
    total = sum(sizes)

    def naive():
        # Gather every source shard (one dp replica) to rank 0, then broadcast the full model.
        full = torch.empty(total)
        if rank == 0:
            offsets = dict(zip(names, [sum(sizes[:i]) for i in range(len(names))]))
            views = {n: full[offsets[n]:offsets[n] + sizes[i]].view(src.params[n]) for i, n in enumerate(names)}
            for r in src.ranks:
                for s in src.shards[r]:
                    box = torch.empty(s.rows[1] - s.rows[0], s.cols[1] - s.cols[0]) if len(s.local_shape) == 2 \
                        else torch.empty(s.rows[1] - s.rows[0])
                    if r == 0:
                        box.copy_(src_buf[s.offset:s.offset + s.numel].view(s.local_shape)[:box.shape[0]])
                    else:
                        dist.recv(box, src=r)
                    view = views[s.param]
                    if view.dim() == 1:
                        view[s.rows[0]:s.rows[1]] = box
                    else:
                        view[s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]] = box
        elif rank in src.shards:
            for s in src.shards[rank]:
                local = src_buf[s.offset:s.offset + s.numel].view(s.local_shape)
                dist.send(local[:s.rows[1] - s.rows[0]].contiguous(), dst=0)
        dist.broadcast(full, src=0)
        if rank in dst.shards:
            offsets = [sum(sizes[:i]) for i in range(len(names))]
            views = {n: full[o:o + k].view(src.params[n]) for n, o, k in zip(names, offsets, sizes)}
            dst.shard_of({n: v.t() if n in dst.transposed else v for n, v in views.items()}, rank)

    t_naive, = timed([naive], repeats)

    volumes = {}
    for t in p.transfers:
        if t.src_rank != t.dst_rank:
            volumes[(t.src_rank, t.dst_rank)] = volumes.get((t.src_rank, t.dst_rank), 0) + t.numel
    outgoing = {d: torch.empty(n) for (s, d), n in volumes.items() if s == rank}
    incoming = {s: torch.empty(n) for (s, d), n in volumes.items() if d == rank}

    # (d): raw plus the copy of what each worker already holds, as one memcpy of the
    # same bytes while the messages are on the wire: the least work any executor does.
    local_n = sum(t.numel for t in p.transfers if t.src_rank == t.dst_rank == rank)
    local_from, local_to = torch.ones(local_n), torch.zeros(local_n)  # pages touched before timing

    def raw(copy_local=False):
        works = [dist.irecv(buf, src=s) for s, buf in incoming.items()]
        works += [dist.isend(buf, dst=d) for d, buf in outgoing.items()]
        if copy_local:
            local_to.copy_(local_from)
        for w in works:
            w.wait()

    t_ours, t_raw, t_raw_local = timed([ours, raw, lambda: raw(copy_local=True)], repeats)
    local_bytes = torch.tensor(4 * local_n)
    dist.all_reduce(local_bytes)
    t0 = time.perf_counter()
    plan(src, dst)
    t_plan = time.perf_counter() - t0
    return dict(ours=t_ours, local=t_local, naive=t_naive, raw=t_raw, raw_local=t_raw_local,
                local_bytes=int(local_bytes), plan_s=t_plan, correct=correct,
                moved=p.bytes_moved, bound=p.bytes_lower_bound, balance=p.send_balance,
                realhf=realhf_bytes(src, dst), model_bytes=4 * total)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-buffer-mb", type=int, default=64)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rows = []
    for i, pair in enumerate(PAIRS):
        r = run_workers(worker, pair[1], i, args.repeats, args.max_buffer_mb << 20, timeout=1800)[0]
        assert r["correct"], pair[0]
        gb = r["bound"] / 1e9
        rows.append([pair[0], pair[1], r["model_bytes"] / 2 ** 20, r["moved"] / 2 ** 20, r["bound"] / 2 ** 20,
                     r["realhf"] / 2 ** 20, r["local_bytes"] / 2 ** 20, r["ours"] * 1e3, r["local"] * 1e3,
                     r["naive"] * 1e3, r["raw"] * 1e3, r["raw_local"] * 1e3, gb / r["ours"], r["naive"] / r["ours"],
                     r["ours"] / r["raw"], r["ours"] / r["raw_local"], r["balance"], r["plan_s"] * 1e3])
        print(rows[-1], flush=True)
    table = markdown_table(["pair", "workers", "model MiB", "moved MiB", "lower bound MiB", "ReaLHF-style MiB",
                            "held locally MiB", "ours ms", "of which local copies ms", "naive ms", "raw p2p ms",
                            "raw + local copy ms", "ours GB/s", "x faster than naive", "ours / raw",
                            "ours / (raw + local)", "send max/mean", "plan ms"], rows)
    note = (f"Machine: {machine('cpu')}; gloo on 127.0.0.1, one process per worker (1 thread each); float32; "
            f"median of {args.repeats} (time = slowest rank, between barriers; ours and the anchors taking turns); "
            f"'raw + local copy': raw p2p plus, on each worker, one memcpy of the bytes it already holds (the "
            f"'held locally' column, all workers) while the messages travel; staging cap "
            f"{args.max_buffer_mb} MiB. Every destination buffer was checked equal to the slices of the full "
            f"parameters.")
    emit(table + "\n\n" + note + "\n", args.out)


if __name__ == "__main__":
    main()
