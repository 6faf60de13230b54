"""Run a function on N gloo processes on 127.0.0.1 (stand-ins for GPUs) and
collect what each rank returns. The function must be importable (module level)."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import traceback

import torch
import torch.multiprocessing as mp


def _worker(rank, world_size, store_file, fn, args, queue):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    try:
        # A file store: torch's TCP store would listen on every interface.
        dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world_size)
        # Serialized to bytes: tensors in shared memory would vanish with this process.
        buf = io.BytesIO()
        torch.save(fn(rank, world_size, *args), buf)
        queue.put((rank, "ok", buf.getvalue()))
    except BaseException:  # noqa: BLE001 (the parent re-raises it with the traceback)
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(fn, world_size: int, *args, timeout: float = 300.0) -> list:
    """fn(rank, world_size, *args) on every rank; returns the results by rank."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    store_dir = tempfile.mkdtemp(prefix="real_ext_store_")
    store = os.path.join(store_dir, "store")
    procs = [ctx.Process(target=_worker, args=(r, world_size, store, fn, args, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, []
    try:
        for _ in range(world_size):
            rank, status, value = queue.get(timeout=timeout)
            if status == "error":
                errors.append(f"rank {rank}:\n{value}")
                break
            results[rank] = torch.load(io.BytesIO(value), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 30)
            if p.is_alive():
                p.kill()
        shutil.rmtree(store_dir, ignore_errors=True)
    if errors:
        raise RuntimeError("worker failed\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]
