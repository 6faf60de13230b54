"""The local launcher (the default): N worker processes started with
multiprocessing (spawn), each talking to the master over an authenticated
connection on 127.0.0.1 and to each other over torch.distributed (gloo on CPU,
NCCL on GPU, one worker per GPU)."""
from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import signal
import queue
import socket
import threading
import time
import traceback
from multiprocessing.connection import Client, Listener, wait

from real_ext.runtime import ops


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_delay(conn) -> None:
    """Send small messages at once: without TCP_NODELAY, a reply that follows
    another within ~40 ms waits for the peer's delayed ACK (Nagle)."""
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as s:  # a dup of the fd
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _worker_main(rank: int, world_size: int, address, authkey: bytes, dist_port: int, setup, threads: int):
    # Ctrl-C is the master's to handle: it stops the workers (shutdown, then terminate).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Client(address, authkey=authkey)
    _no_delay(conn)
    conn.send(("hello", rank))
    try:
        import torch
        import torch.distributed as dist
        torch.set_num_threads(threads)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(dist_port))
        backend = "nccl" if setup.device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
            setup.device = f"cuda:{rank % torch.cuda.device_count()}"
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        from real_ext.runtime.worker import Worker, worker_loop
        worker = Worker(rank, world_size, setup)
        conn.send(("ready", rank))
        worker_loop(worker, conn.recv, conn.send)
    except (EOFError, OSError):
        pass  # the master is gone
    except BaseException:  # noqa: BLE001 (reported to the master)
        try:
            conn.send(("failed", traceback.format_exc()))
        except OSError:
            pass
    finally:
        try:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 (best effort while exiting)
            pass


class WorkerFailure(RuntimeError):
    """A worker raised or died; the message names it, the MFC and the traceback."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


class LocalLauncher:
    def __init__(self, n_workers: int, setup, *, threads_per_worker: int = 1, start_timeout: float = 300.0):
        self.n = n_workers
        self.closed = False
        authkey = secrets.token_bytes(32)
        self.listener = Listener(("127.0.0.1", 0), authkey=authkey)
        ctx = mp.get_context("spawn")
        port = _free_port()
        self.procs = [ctx.Process(target=_worker_main, daemon=True,
                                  args=(r, n_workers, self.listener.address, authkey, port, setup,
                                        threads_per_worker))
                      for r in range(n_workers)]
        for p in self.procs:
            p.start()
        self.conns = [None] * n_workers
        try:
            self._connect(time.monotonic() + start_timeout)
        except BaseException:
            self.close()
            raise

    def _dead(self) -> str:
        return ", ".join(f"worker {r} (exit code {p.exitcode})" for r, p in enumerate(self.procs) if not p.is_alive())

    def _connect(self, deadline: float) -> None:
        """Accept every worker's connection, then wait for each to report ready,
        failing early when a worker dies or reports a failure while starting."""
        accepted: queue.Queue = queue.Queue()

        def accept():
            for _ in range(self.n):
                try:
                    conn = self.listener.accept()
                    _no_delay(conn)
                    accepted.put((conn.recv()[1], conn))
                except OSError:  # the listener was closed: we gave up
                    return
        threading.Thread(target=accept, daemon=True).start()
        waiting = set(range(self.n))
        while waiting:
            try:
                rank, conn = accepted.get(timeout=0.5)
                self.conns[rank] = conn
                continue
            except queue.Empty:
                pass
            if any(not self.procs[r].is_alive() for r in range(self.n) if self.conns[r] is None):
                raise WorkerFailure(f"workers died before connecting: {self._dead()}")
            if all(c is not None for c in self.conns):
                break
            if time.monotonic() > deadline:
                raise WorkerFailure("workers did not connect in time")
        starting = set(range(self.n))
        while starting:
            for conn in wait([self.conns[r] for r in starting], timeout=0.5):
                rank = self.conns.index(conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    raise WorkerFailure(f"worker {rank} died while starting: {self._dead()}", rank=rank) from None
                if msg[0] == "failed":
                    raise WorkerFailure(f"worker {rank} failed while starting:\n{msg[1]}", rank=rank)
                starting.discard(rank)
            if time.monotonic() > deadline:
                raise WorkerFailure(f"workers {sorted(starting)} did not finish starting in time")

    def send(self, rank: int, op: ops.Op) -> None:
        self.conns[rank].send(op)

    def receive(self, timeout: float):
        """(rank, reply) of the next reply from any worker, or None on timeout.
        Raises WorkerFailure when a worker died or reported a failure."""
        ready = wait([c for c in self.conns if c is not None], timeout=timeout)
        if not ready:
            for rank, p in enumerate(self.procs):
                if not p.is_alive():
                    raise WorkerFailure(f"worker {rank} died (exit code {p.exitcode})", rank=rank)
            return None
        conn = ready[0]
        rank = self.conns.index(conn)
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            self.procs[rank].join(timeout=5)
            raise WorkerFailure(f"worker {rank} died (exit code {self.procs[rank].exitcode})", rank=rank) from None
        if isinstance(msg, tuple) and msg[0] == "failed":
            raise WorkerFailure(f"worker {rank} failed:\n{msg[1]}", rank=rank)
        return rank, msg

    def close(self, grace: float = 10.0) -> None:
        """Stop every worker: a shutdown request, then (after ``grace`` seconds
        for all together) terminate, then kill. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        for rank, conn in enumerate(self.conns):
            if conn is not None:
                try:
                    conn.send(ops.Op(-1, ops.SHUTDOWN, "shutdown", (rank,)))
                except OSError:
                    pass
        deadline = time.monotonic() + grace
        for p in self.procs:
            p.join(timeout=max(deadline - time.monotonic(), 0.0))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for conn in self.conns:
            if conn is not None:
                conn.close()
        self.listener.close()
