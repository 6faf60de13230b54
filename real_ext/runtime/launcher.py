"""Starting the workers and talking to them. Every worker runs ``serve``: it
connects back to the master over an authenticated connection (requests in,
replies and failures out) and joins a torch.distributed world with the other
workers (gloo on CPU, NCCL on GPU, one worker per GPU). ``ConnectedWorkers`` is
the master's side of those connections; ``LocalLauncher`` (the default) starts
the workers as local processes (multiprocessing, spawn, 127.0.0.1), and
real_ext/runtime/ray_launcher.py as Ray actors across machines."""
from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import shutil
import signal
import queue
import socket
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Client, Listener, wait

from real_ext.heap import hold_for_process
from real_ext.runtime import ops


def _no_delay(conn) -> None:
    """Send small messages at once: without TCP_NODELAY, a reply that follows
    another within ~40 ms waits for the peer's delayed ACK (Nagle)."""
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as s:  # a dup of the fd
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def serve(rank: int, world_size: int, conn, setup, threads: int, rendezvous: dict) -> None:
    """The body of every worker, however it was started (a local process or a
    Ray actor): join the torch.distributed world (``rendezvous``: the
    init_process_group arguments that say where), build the Worker, execute the
    master's operations from ``conn``; an exception goes back to the master
    with its traceback."""
    conn.send(("hello", rank))
    try:
        import torch
        import torch.distributed as dist
        torch.set_num_threads(threads)
        hold_for_process()   # a worker re-runs the same calls: keep their memory (real_ext/heap.py)
        backend = "nccl" if setup.device.startswith("cuda") else "gloo"
        if backend == "nccl":
            # Local: worker r on GPU r mod the GPU count; under Ray each worker sees only its own GPU.
            torch.cuda.set_device(rank % torch.cuda.device_count())
            setup.device = f"cuda:{rank % torch.cuda.device_count()}"
        dist.init_process_group(backend, rank=rank, world_size=world_size, **rendezvous)
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


def connect(address, authkey: bytes):
    """A worker's connection to the master's listener."""
    conn = Client(address, authkey=authkey)
    _no_delay(conn)
    return conn


def _worker_main(rank: int, world_size: int, address, authkey: bytes, store_file: str, setup, threads: int):
    # Ctrl-C is the master's to handle: it stops the workers (shutdown, then terminate).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(rank, world_size, connect(address, authkey), setup, threads, {"init_method": f"file://{store_file}"})


class WorkerFailure(RuntimeError):
    """A worker raised or died; the message names it, the MFC and the traceback."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


class ConnectedWorkers:
    """The master's side of N workers that connect back to its listener: the
    start handshake, requests out, replies in, failures as WorkerFailure. A
    subclass starts the workers, then calls ``_connect``; it says which
    workers are gone (``_exited``) and how to stop them for good (``_stop``)."""

    POLL_S = 1.0   # a quiet wait checks this often that every worker still runs

    def __init__(self, n_workers: int, host: str, authkey: bytes):
        """Listen on ``host`` (an ephemeral port) for the workers' connections."""
        self.n = n_workers
        # Every worker connects at once while the master authenticates them one
        # by one: with Listener's default backlog of 1 the kernel dropped the
        # connections that found the queue full, and those workers waited for
        # the handshake forever.
        self.listener = Listener((host, 0), authkey=authkey, backlog=max(n_workers, 16))
        self.conns = [None] * n_workers
        self.closed = False

    def _exited(self) -> dict[int, str]:
        """rank -> why it is gone (an exit code, a lost node), for workers no longer running."""
        raise NotImplementedError

    def _stop(self, grace: float) -> None:
        """Make sure every worker is gone, waiting at most ``grace`` seconds for a clean exit."""
        raise NotImplementedError

    def _describe(self, exited: dict[int, str]) -> str:
        return ", ".join(f"worker {r} ({why})" for r, why in sorted(exited.items()))

    def _why_gone(self, rank: int, wait_s: float = 5.0) -> str:
        """Why ``rank`` is gone, once its launcher knows (its connection closed first)."""
        deadline = time.monotonic() + wait_s
        while True:
            exited = self._exited()
            if rank in exited or time.monotonic() > deadline:
                return exited.get(rank, "connection lost")
            time.sleep(0.1)

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
        while not all(c is not None for c in self.conns):
            try:
                rank, conn = accepted.get(timeout=0.5)
                self.conns[rank] = conn
                continue
            except queue.Empty:
                pass
            exited = {r: why for r, why in self._exited().items() if self.conns[r] is None}
            if exited:
                raise WorkerFailure(f"workers died before connecting: {self._describe(exited)}")
            if time.monotonic() > deadline:
                raise WorkerFailure("workers did not connect in time")
        starting = set(range(self.n))
        while starting:
            for conn in wait([self.conns[r] for r in starting], timeout=0.5):
                rank = self.conns.index(conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    raise WorkerFailure(f"worker {rank} died while starting ({self._why_gone(rank)})",
                                        rank=rank) from None
                if msg[0] == "failed":
                    raise WorkerFailure(f"worker {rank} failed while starting:\n{msg[1]}", rank=rank)
                starting.discard(rank)
            exited = {r: why for r, why in self._exited().items() if r in starting}
            if exited:
                raise WorkerFailure(f"workers died while starting: {self._describe(exited)}")
            if time.monotonic() > deadline:
                raise WorkerFailure(f"workers {sorted(starting)} did not finish starting in time")

    def send(self, rank: int, op: ops.Op) -> None:
        self.conns[rank].send(op)

    def receive(self, timeout: float):
        """(rank, reply) of the next reply from any worker, or None on timeout.
        Raises WorkerFailure when a worker died or reported a failure. A worker
        whose connection stays open while it is gone (its machine lost) is
        caught by the check between waits."""
        deadline = time.monotonic() + timeout
        conns = [c for c in self.conns if c is not None]
        while True:
            ready = wait(conns, timeout=max(0.0, min(self.POLL_S, deadline - time.monotonic())))
            if not ready:
                exited = self._exited()
                # A worker that failed sent its traceback before it exited: read that first.
                if exited and not (ready := wait(conns, timeout=0)):
                    rank = min(exited)
                    raise WorkerFailure(f"worker {rank} died ({exited[rank]})", rank=rank)
            if ready:
                break
            if time.monotonic() >= deadline:
                return None
        conn = ready[0]
        rank = self.conns.index(conn)
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            raise WorkerFailure(f"worker {rank} died ({self._why_gone(rank)})", rank=rank) from None
        if isinstance(msg, tuple) and msg[0] == "failed":
            raise WorkerFailure(f"worker {rank} failed:\n{msg[1]}", rank=rank)
        return rank, msg

    def close(self, grace: float = 10.0) -> None:
        """Stop every worker: a shutdown request, then (after ``grace`` seconds
        for all together) force. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        for rank, conn in enumerate(self.conns):
            if conn is not None:
                try:
                    conn.send(ops.Op(-1, ops.SHUTDOWN, "shutdown", (rank,)))
                except OSError:
                    pass
        try:
            self._stop(grace)
        finally:
            for conn in self.conns:
                if conn is not None:
                    conn.close()
            self.listener.close()


class LocalLauncher(ConnectedWorkers):
    """The workers as local processes (multiprocessing, spawn)."""

    def __init__(self, n_workers: int, setup, *, threads_per_worker: int = 1, start_timeout: float = 300.0):
        authkey = secrets.token_bytes(32)
        super().__init__(n_workers, "127.0.0.1", authkey)
        ctx = mp.get_context("spawn")
        # The rendezvous store is a file: torch's TCP store would listen on every
        # interface, not only on 127.0.0.1.
        self.store_dir = tempfile.mkdtemp(prefix="real_ext_store_")
        self.procs = [ctx.Process(target=_worker_main, daemon=True,
                                  args=(r, n_workers, self.listener.address, authkey,
                                        os.path.join(self.store_dir, "store"), setup, threads_per_worker))
                      for r in range(n_workers)]
        for p in self.procs:
            p.start()
        try:
            self._connect(time.monotonic() + start_timeout)
        except BaseException:
            self.close()
            raise

    def _exited(self) -> dict[int, str]:
        return {r: f"exit code {p.exitcode}" for r, p in enumerate(self.procs) if p.exitcode is not None}

    def _stop(self, grace: float) -> None:
        """Wait, then terminate, then kill; then remove the rendezvous file."""
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
        shutil.rmtree(self.store_dir, ignore_errors=True)
