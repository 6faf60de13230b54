"""Measure this machine for ProfiledCost, with real_ext's own model code, in
one process (plus two spawned gloo processes for the links):

- one transformer block: forward, and forward + backward, vs tokens, as one
  tensor-parallel rank computes it at each tp of PROFILE_TPS that divides
  the model (the all-reduces between ranks are costed from the gloo fits);
- the outer part (embedding, final norm, log-prob or value head) vs tokens;
- a decode step of real_ext.generation.generate vs batch, split into a
  per-block part and a fixed part by timing a 1-block and a 4L-block model;
- the optimizer (Trainer's clipping + AdamW) vs parameter count;
- gloo point-to-point and all-reduce between two local processes on
  127.0.0.1, fitted as latency + bytes / bandwidth, and the runtime's own
  data transfer (runtime/transfer.py) between them: its cost beyond those
  messages, per transfer and per sample;
- building a model (what a reallocation into a new layout does first);
- how much slower a block's forward + backward runs when k worker processes
  run it at once (k = 1 .. twice the cores): the cores' real sharing;
- the runtime's fixed cost per operation, on real workers;
- matmul FLOP/s and copy bandwidth, RAM and core count, for the Hardware.

    python -m real_ext.plan.profile profile.json          # ~30-60 s
    cost = ProfiledCost.from_json("profile.json")

Times are the median of several samples (see _timeit) at ``threads``
threads (1: what each local worker process gets, see runtime/launcher.py),
in float32.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import queue as queue_module
import shutil
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from real_ext.data.sample import SequenceSample
from real_ext.model import ModelConfig, ReaLModel
from real_ext.model.logprob import next_token_targets
from real_ext.model.train import OptimConfig, Trainer
from real_ext.parallel.layout import LayoutError
from real_ext.plan.hardware import PROFILE_VERSION

SEQ_LEN = 64                 # tokens per packed sequence in the block and head timings
PROFILE_TPS = (1, 2)         # tensor-parallel widths whose per-rank block is timed
DECODE_PROMPT = 8            # prompt tokens per sequence when timing decode
DECODE_STEPS = (2, 26)       # generate this many new tokens; the difference gives the per-step time
MIN_SAMPLE_S = 0.002         # calls shorter than this are looped within one sample (timer resolution)
MIN_TOTAL_S = 0.15           # more than ``repeats`` samples while they add up to less than this
COMM_SIZES = (8, 1 << 10, 1 << 16, 1 << 20, 1 << 24)   # bytes
TRANSFER_SAMPLES = (8, 64)   # samples per data transfer when timing the runtime's transfer
TRANSFER_SEQ_LEN = 16        # tokens per sample in those transfers
CONTENTION_TOKENS = 256      # tokens of the block forward + backward run by k processes at once
CONTENTION_SAMPLE_S = 0.25   # how long that work takes one process alone


def _timeit(fn, repeats: int) -> float:
    """Seconds per call: the median of at least ``repeats`` samples (more for
    short calls), after one warm-up call. The simulator predicts a mean step,
    which pays what a call typically costs, not its best case (the least
    sample, used before, left every simulated step 10-15% short)."""
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    n = max(1, int(MIN_SAMPLE_S / max(once, 1e-9)))
    samples = []
    while len(samples) < repeats or (sum(samples) * n < MIN_TOTAL_S and len(samples) < 20 * repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n)
    return statistics.median(samples)


def packed_batch(config: ModelConfig, tokens: int, seq_len: int = SEQ_LEN, seed: int = 0):
    """(input_ids, cu_seqlens): ``tokens`` random tokens in sequences of
    ``seq_len`` (the last one shorter when it does not divide)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (tokens,), generator=g)
    lengths = [seq_len] * (tokens // seq_len) + ([tokens % seq_len] if tokens % seq_len else [])
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return ids, cu


def _with_layers(config: ModelConfig, n: int) -> ModelConfig:
    return dataclasses.replace(config, num_layers=n)


def _clear_grads(model):
    for p in model.parameters():
        p.grad = None


def _block_passes(model, tokens: int):
    """(forward, forward + backward) of ``model``'s first block over ``tokens`` tokens."""
    block = next(iter(model.model.layers.values()))
    ids, cu = packed_batch(model.config, tokens)
    info = model.packed_info(cu)
    with torch.no_grad():
        x = model.embed(ids, info)
    grad = torch.randn_like(x)

    def forward():
        with torch.no_grad():
            block(x, info, None)

    def forward_backward():
        block(x.detach().requires_grad_(), info, None).backward(grad)
        _clear_grads(block)
    return forward, forward_backward


def tp_rank_config(config: ModelConfig, tp: int) -> ModelConfig:
    """A model whose blocks compute what one rank of ``config`` computes under
    tensor parallelism ``tp`` (Megatron's split: the heads and the MLP width
    divided, kv heads replicated when tp exceeds them), the all-reduces aside."""
    from real_ext.plan.cost import local_dims
    q, kv, intermediate, _ = local_dims(config, tp)
    return dataclasses.replace(config, num_heads=q // config.head_dim, num_kv_heads=kv // config.head_dim,
                               intermediate_size=intermediate)


def _profile_blocks(config: ModelConfig, token_grid, repeats) -> dict:
    """Block timings per tensor-parallel width (key: str(tp)); widths that do
    not divide the model are left out."""
    out = {"seq_len": SEQ_LEN, "tokens": list(token_grid), "tp": {}}
    for tp in PROFILE_TPS:
        try:
            local = tp_rank_config(config, tp)
        except LayoutError:   # tp does not divide the heads or the MLP
            continue
        model = ReaLModel.from_config(_with_layers(local, 1))
        times = out["tp"][str(tp)] = {"forward_s": [], "forward_backward_s": []}
        for tokens in token_grid:
            forward, forward_backward = _block_passes(model, tokens)
            times["forward_s"].append(_timeit(forward, repeats))
            times["forward_backward_s"].append(_timeit(forward_backward, repeats))
    return out


def outer_pass(model, ids, cu):
    """What a forward does besides the blocks: rope tables, embedding, final
    norm, and the head (next-token log-probs, or values)."""
    info = model.packed_info(cu)
    hidden = model.final_hidden(model.embed(ids, info))
    if model.head == "value":
        return model.head_output(hidden)
    targets, _ = next_token_targets(ids, cu)
    return model.token_logprobs(hidden, targets)


def _profile_head(models: dict, token_grid, repeats) -> dict:
    out = {"tokens": list(token_grid)}
    for name, model in models.items():
        fwd, fwd_bwd = [], []
        for tokens in token_grid:
            ids, cu = packed_batch(model.config, tokens)

            def forward():
                with torch.no_grad():
                    outer_pass(model, ids, cu)

            def forward_backward():
                outer_pass(model, ids, cu).sum().backward()
                _clear_grads(model)
            fwd.append(_timeit(forward, repeats))
            fwd_bwd.append(_timeit(forward_backward, repeats))
        out[f"{name}_forward_s"], out[f"{name}_forward_backward_s"] = fwd, fwd_bwd
    return out


def _decode_step_time(model, batch: int, repeats: int) -> float:
    from real_ext.generation import GenerationConfig, generate
    g = torch.Generator().manual_seed(batch)
    prompts = torch.randint(0, model.config.vocab_size, (batch, DECODE_PROMPT), generator=g).tolist()
    short, long = (GenerationConfig(max_new_tokens=n, seed=0) for n in DECODE_STEPS)
    t_short = _timeit(lambda: generate(model, prompts, short), repeats)
    t_long = _timeit(lambda: generate(model, prompts, long), repeats)
    return max(t_long - t_short, 1e-9) / (DECODE_STEPS[1] - DECODE_STEPS[0])


def _profile_decode(config: ModelConfig, batches, repeats) -> dict:
    """Per-block and fixed (embedding, head, sampling, bookkeeping) parts of a
    decode step: t(n) = fixed + n * block, from models of 1 and 4L blocks (a
    wide gap, so that timing noise hardly moves the split)."""
    if config.max_positions < DECODE_PROMPT + DECODE_STEPS[1]:
        raise ValueError(f"profiling decode needs a context of {DECODE_PROMPT + DECODE_STEPS[1]} tokens; the model "
                         f"has max_position_embeddings={config.max_positions}")
    deep = 4 * config.num_layers
    one, many = (ReaLModel.from_config(_with_layers(config, n)) for n in (1, deep))
    out = {"batch": list(batches), "context": DECODE_PROMPT + sum(DECODE_STEPS) / 2, "layer_s": [], "fixed_s": []}
    for b in batches:
        t1, tl = _decode_step_time(one, b, repeats), _decode_step_time(many, b, repeats)
        # Noise can make the difference negative on tiny models; a block costs something.
        layer = max((tl - t1) / (deep - 1), 0.02 * tl / deep)
        out["layer_s"].append(layer)
        out["fixed_s"].append(max(t1 - layer, 0.02 * t1))
    return out


def _profile_optimizer(config: ModelConfig, repeats) -> dict:
    out = {"params": [], "step_s": []}
    for n in sorted({1, config.num_layers, 4 * config.num_layers}):
        trainer = Trainer(ReaLModel.from_config(_with_layers(config, n)), OptimConfig(lr=1e-5))

        def step():
            # The per-update work of Trainer.train_step after the backward and the all-reduce.
            trainer.grad.normal_(std=1e-3)
            trainer._clip()
            trainer._adamw(1e-5)
        # normal_ is not part of the update: time it alone and subtract.
        fill = _timeit(lambda: trainer.grad.normal_(std=1e-3), repeats)
        out["params"].append(trainer.grad.numel())
        out["step_s"].append(max(_timeit(step, repeats) - fill, 1e-9))
    return out


def _profile_build(config: ModelConfig, repeats) -> dict:
    """Building a model (ReaLModel's constructor, which a reallocation into a
    layout with no live copy runs first on every destination worker):
    t(n) = fixed + n * per block, from models of 1 and 4L blocks."""
    deep = 4 * config.num_layers
    t1, tl = (_timeit(lambda: ReaLModel(_with_layers(config, n)), repeats) for n in (1, deep))
    per_block = max((tl - t1) / (deep - 1), 0.0)
    return {"fixed_s": max(t1 - per_block, 0.0), "per_block_s": per_block}


def _contention_work(config: ModelConfig):
    """A one-block model's forward + backward over CONTENTION_TOKENS tokens."""
    return _block_passes(ReaLModel.from_config(_with_layers(config, 1)), CONTENTION_TOKENS)[1]


def _contention_worker(index: int, config: ModelConfig, threads: int, n_iter: int, counts, barrier, queue):
    torch.set_num_threads(threads)
    try:
        work = _contention_work(config)
        work()
        for k in counts:
            barrier.wait()
            if index < k:
                start = time.perf_counter()
                for _ in range(n_iter):
                    work()
                queue.put((k, time.perf_counter() - start))
            barrier.wait()
    except BaseException as e:  # noqa: BLE001 (reported to the parent)
        queue.put(("error", repr(e)))
        barrier.abort()


def contention_counts(cores: int) -> list[int]:
    """How many processes at once the contention profile tries: every count up
    to twice the cores on small machines, five counts up to 16 otherwise."""
    top = max(2, min(2 * cores, 16))
    return list(range(1, top + 1)) if top <= 8 else sorted({1, top // 4, top // 2, 3 * top // 4, top})


def _gather(queue, procs, n: int, timeout: float, what: str) -> list:
    """``n`` messages that the spawned ``procs`` put on ``queue``; a process
    dying before it reports, or ``timeout`` seconds passing, is an error
    saying ``what`` was under way."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        try:
            out.append(queue.get(timeout=0.5))
        except queue_module.Empty:
            dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"{what}: process {dead[0][0]} exited with code {dead[0][1]} before reporting; a "
                                   f"script calling run_profile must guard its entry point with "
                                   f"`if __name__ == '__main__':` (spawned processes re-import it)") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} took over {timeout:.0f} s") from None
    return out


def _profile_contention(config: ModelConfig, threads: int, timeout: float = 120.0) -> dict:
    """How much slower a block's forward + backward runs per process when k
    processes run it at once, against one alone. Ideal sharing of c cores
    would give max(1, k / c); caches, memory bandwidth and the scheduler add
    to it, and the simulator uses what is measured here."""
    counts = contention_counts(os.cpu_count() or 1)
    alone = _timeit(_contention_work(config), 3)
    n_iter = max(3, int(CONTENTION_SAMPLE_S / alone))
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(counts[-1])
    procs = [ctx.Process(target=_contention_worker, args=(i, config, threads, n_iter, counts, barrier, queue))
             for i in range(counts[-1])]
    for p in procs:
        p.start()
    times: dict[int, list[float]] = {k: [] for k in counts}
    try:
        for k, seconds in _gather(queue, procs, sum(counts), timeout, f"profiling {counts[-1]} processes at once"):
            if k == "error":
                raise RuntimeError(f"a contention profiling process failed: {seconds}")
            times[k].append(seconds)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    base = statistics.mean(times[1])
    return {"workers": counts, "tokens": CONTENTION_TOKENS,
            "slowdown": [max(1.0, statistics.mean(times[k]) / base) for k in counts]}


def _machine(threads: int, repeats: int) -> dict:
    a = torch.randn(1024, 1024)
    matmul = _timeit(lambda: a @ a, repeats)
    src = torch.randn(1 << 24)
    dst = torch.empty_like(src)
    copy = _timeit(lambda: dst.copy_(src), repeats)
    return {"cpu_count": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "matmul_flops": 2 * 1024 ** 3 / matmul, "mem_bw": 2 * src.numel() * 4 / copy}


# ------------------------------------------------------------ links

def _iterations(nbytes: int) -> int:
    """The same on both ranks (collectives must match), about 48 MiB moved per size."""
    return max(3, min(100, 3 * (1 << 24) // nbytes))


def _comm_worker(rank: int, store_file: str, threads: int, queue):
    torch.set_num_threads(threads)
    try:
        # A file store: torch's TCP store would listen on every interface.
        dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
        p2p, ar = [], []
        for nbytes in COMM_SIZES:
            x = torch.zeros(max(1, nbytes // 4))
            n = _iterations(nbytes)
            dist.barrier()
            start = time.perf_counter()
            for _ in range(n):  # ping-pong: half a round trip is one message
                if rank == 0:
                    dist.send(x, 1)
                    dist.recv(x, 1)
                else:
                    dist.recv(x, 0)
                    dist.send(x, 0)
            p2p.append((time.perf_counter() - start) / (2 * n))
            dist.barrier()
            start = time.perf_counter()
            for _ in range(n):
                dist.all_reduce(x)
            ar.append((time.perf_counter() - start) / n)
        transfer = torch.tensor(_time_transfers(rank), dtype=torch.float64)
        dist.broadcast(transfer, src=1)   # the receiver's times: a transfer ends when its data is stored
        if rank == 0:
            queue.put(("ok", p2p, ar, transfer.tolist()))
    except BaseException as e:  # noqa: BLE001 (reported to the parent)
        queue.put(("error", repr(e), None, None))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


TRANSFER_KEYS = ("behav_logp", "input_ids", "ref_logp", "reward")   # what a PPO training call receives


def _transfer_sample(sid: int) -> SequenceSample:
    n = TRANSFER_SEQ_LEN
    return SequenceSample.single(sid, input_ids=[torch.zeros(n, dtype=torch.int64)], behav_logp=[torch.zeros(n)],
                                 ref_logp=[torch.zeros(n)], reward=[torch.zeros(1)])


def _transfer_bytes(n_samples: int) -> int:
    return n_samples * _transfer_sample(0).nbytes()


def _time_transfers(rank: int, repeats: int = 7) -> list[float]:
    """Seconds of runtime.transfer.run_transfers moving TRANSFER_SAMPLES
    samples (the keys a PPO training call receives) from rank 0 to rank 1,
    median of ``repeats``, as rank ``rank`` saw it."""
    from real_ext.runtime.transfer import run_transfers
    store = {sid: _transfer_sample(sid) for sid in range(max(TRANSFER_SAMPLES))} if rank == 0 else {}
    out = []
    for n in TRANSFER_SAMPLES:
        pairs = [(0, 1, list(range(n)), list(TRANSFER_KEYS))]
        samples = []
        for _ in range(repeats):
            if rank == 1:
                store.clear()
            dist.barrier()
            start = time.perf_counter()
            run_transfers(rank, pairs, store, torch.device("cpu"))
            samples.append(time.perf_counter() - start)
        out.append(statistics.median(samples))
    return out


def _fit_transfer(times: list[float], p2p: dict) -> dict:
    """The runtime's data transfer beyond its gloo messages (a pickled header
    as two messages, then one per key: each latency + bytes / bandwidth):
    fixed + per_sample * samples, from the two sample counts."""
    messages = 2 + len(TRANSFER_KEYS)
    rest = [t - messages * p2p["latency"] - _transfer_bytes(n) / p2p["bw"] for n, t in zip(TRANSFER_SAMPLES, times)]
    per_sample = max((rest[1] - rest[0]) / (TRANSFER_SAMPLES[1] - TRANSFER_SAMPLES[0]), 0.0)
    return {"samples": list(TRANSFER_SAMPLES), "keys": len(TRANSFER_KEYS), "s": list(times),
            "fixed_s": max(rest[0] - per_sample * TRANSFER_SAMPLES[0], 0.0), "per_sample_s": per_sample}


def _fit(sizes, times) -> dict:
    """latency = the smallest message's time; bandwidth from the two largest."""
    bw = (sizes[-1] - sizes[-2]) / max(times[-1] - times[-2], 1e-12)
    return {"bytes": list(sizes), "s": list(times), "latency": times[0], "bw": bw}


def _profile_comm(threads: int, timeout: float = 120.0) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    store_dir = tempfile.mkdtemp(prefix="real_ext_store_")
    store = os.path.join(store_dir, "store")
    procs = [ctx.Process(target=_comm_worker, args=(r, store, threads, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        [(status, p2p, ar, transfer)] = _gather(queue, procs, 1, timeout, "profiling gloo between two local processes")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        shutil.rmtree(store_dir, ignore_errors=True)
    if status != "ok":
        raise RuntimeError(f"profiling gloo between two local processes failed: {p2p}")
    sizes = [max(1, n // 4) * 4 for n in COMM_SIZES]
    p2p = _fit(sizes, p2p)
    return {"p2p": p2p, "all_reduce": _fit(sizes, ar), "transfer": _fit_transfer(transfer, p2p)}


# ------------------------------------------------------------ entry point

def _profile_runtime_ops(threads: int, n_workers: int = 4, n_ops: int = 40) -> dict:
    """The runtime's fixed cost of one operation: the master sends an op to
    every worker, each executes it (a clear, nearly nothing) and replies;
    measured over ``n_ops`` ops one after another on ``n_workers`` real
    workers (real_ext/runtime/launcher.py). The simulator adds it to every
    operation it schedules."""
    from real_ext.runtime import ops
    from real_ext.runtime.launcher import LocalLauncher
    from real_ext.runtime.worker import Setup
    launcher = LocalLauncher(n_workers, Setup({}, [], {}, {}), threads_per_worker=threads)
    try:
        def one(i):
            op = ops.Op(i, ops.CLEAR, "clear", tuple(range(n_workers)), {})
            for rank in op.participants:
                launcher.send(rank, op)
            for _ in op.participants:
                launcher.receive(timeout=60.0)
        for i in range(5):   # warm-up
            one(i)
        start = time.perf_counter()
        for i in range(n_ops):
            one(5 + i)
        return {"op_latency": (time.perf_counter() - start) / n_ops, "workers": n_workers}
    finally:
        launcher.close()


def run_profile(out_json: str, *, model_config: dict | ModelConfig | None = None,
                token_grid=(64, 256, 1024, 4096), decode_batches=(1, 8, 32, 128), repeats: int = 3,
                threads: int = 1) -> dict:
    """Profile this machine (see the module docstring), write the JSON to
    ``out_json`` and return it. ``model_config``: a ModelConfig or a Hugging
    Face config dict (default: the sort task's "tiny" model)."""
    if model_config is None:
        from real_ext.tasks import get_task
        model_config = get_task("sort").model_config("tiny")
    config = model_config if isinstance(model_config, ModelConfig) else ModelConfig.from_hf_dict(model_config)
    if not token_grid or min(token_grid) < 1 or not decode_batches or min(decode_batches) < 1 or repeats < 1:
        raise ValueError(f"run_profile needs non-empty token_grid and decode_batches of positive sizes and repeats "
                         f">= 1; got {token_grid}, {decode_batches}, {repeats}")
    token_grid, decode_batches = sorted(set(token_grid)), sorted(set(decode_batches))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        start = time.perf_counter()
        models = {head: ReaLModel.from_config(config, head=head) for head in ("lm", "value")}
        profile = {
            "version": PROFILE_VERSION,   # 2: median timings, model build, data transfer, contention
            "machine": _machine(threads, repeats),
            "model_config": dataclasses.asdict(config),
            "dtype": "float32",
            "layer": _profile_blocks(config, token_grid, repeats),
            "head": _profile_head(models, token_grid, repeats),
            "decode": _profile_decode(config, decode_batches, repeats),
            "optimizer": _profile_optimizer(config, repeats),
            "build": _profile_build(config, repeats),
            "comm": _profile_comm(threads),
            "contention": _profile_contention(config, threads),
            "runtime": _profile_runtime_ops(threads),
        }
        profile["seconds"] = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    if os.path.dirname(out_json):
        os.makedirs(os.path.dirname(out_json), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(profile, f, indent=1)
    return profile


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_json")
    p.add_argument("--size", default="tiny", help="the sort task's model size to profile (tiny, small)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    from real_ext.tasks import get_task
    prof = run_profile(args.out_json, model_config=get_task("sort").model_config(args.size), repeats=args.repeats,
                       threads=args.threads)
    m, c, k = prof["machine"], prof["comm"], prof["contention"]
    print(f"{args.out_json}: {prof['seconds']:.0f} s; {m['cpu_count']} cores, matmul {m['matmul_flops'] / 1e9:.1f} "
          f"GFLOP/s, copy {m['mem_bw'] / 1e9:.1f} GB/s, gloo p2p {c['p2p']['latency'] * 1e6:.0f} us + "
          f"{c['p2p']['bw'] / 1e9:.2f} GB/s, all-reduce {c['all_reduce']['latency'] * 1e6:.0f} us + "
          f"{c['all_reduce']['bw'] / 1e9:.2f} GB/s; data transfer {c['transfer']['fixed_s'] * 1e3:.2f} ms + "
          f"{c['transfer']['per_sample_s'] * 1e6:.0f} us per sample; {k['workers'][-1]} processes at once run "
          f"{k['slowdown'][-1]:.2f}x slower each (ideal sharing: {max(1.0, k['workers'][-1] / m['cpu_count']):.2f}x)")


if __name__ == "__main__":
    main()
