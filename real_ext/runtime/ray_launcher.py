"""The Ray launcher: the same workers as the local launcher (``serve`` in
real_ext/runtime/launcher.py), started as Ray actors across the machines of a
Ray cluster; the master is the Ray driver.

- Placement: one placement-group bundle per worker (``{"GPU": 1}``, or
  ``{"CPU": threads_per_worker}`` on CPU), strategy PACK. Ranks are numbered
  node after node over the placed bundles, so consecutive ranks share a node,
  as device meshes assume (``n_nodes x gpus_per_node``, or an aligned slice of
  one node); ``workers_per_node`` says what came out.
- Control: each actor connects back to the driver's authenticated listener on
  the driver's node address, the one control path both launchers share.
- Rendezvous: torch.distributed's key-value store is a Ray actor on worker 0's
  node (``RayStore``), so no port is opened for it; gloo and NCCL bind the
  interface of each worker's Ray node address (unless GLOO_SOCKET_IFNAME /
  NCCL_SOCKET_IFNAME say otherwise).
- Failures: a worker's exception comes back over its connection with the
  traceback; an actor that dies (or whose node is lost: its connection may stay
  open) is found by polling its long-running ``run`` call.
- Logs: Ray prints every worker's output on the driver's console, prefixed
  ``(worker R pid=...)``; with ``log_dir`` each worker's lines also go to
  ``log_dir/worker_R.log``.

Ray is optional (``pip install "real_ext[ray]"``): only this module imports it.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import socket
import struct
import sys
import time
from datetime import timedelta

try:
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError as e:   # the optional extra is missing
    raise ImportError('the Ray launcher needs Ray: pip install "real_ext[ray]"') from e

import torch.distributed as dist

from real_ext.runtime.launcher import ConnectedWorkers, WorkerFailure, connect, serve

SIOCGIFADDR = 0x8915   # Linux ioctl: an interface's IPv4 address


def interface_of(ip: str) -> str | None:
    """The name of the network interface holding ``ip`` (Linux), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                addr = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24]
            except OSError:   # no IPv4 address on this interface
                continue
            if socket.inet_ntoa(addr) == ip:
                return name
    return None


# ------------------------------------------------------------ rendezvous


@ray.remote(num_cpus=0)
class _StoreActor:
    """torch.distributed's key-value store, held by an async actor: a get
    waits for its keys without blocking the other workers' calls."""

    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.changed = asyncio.Condition()

    async def set(self, key: str, value: bytes) -> None:
        async with self.changed:
            self.data[key] = value
            self.changed.notify_all()

    async def get(self, keys: list[str], timeout_s: float) -> list[bytes]:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: all(k in self.data for k in keys)), timeout_s)
            except asyncio.TimeoutError:
                missing = [k for k in keys if k not in self.data]
                raise TimeoutError(f"rendezvous: keys {missing} not set within {timeout_s:.0f} s") from None
            return [self.data[k] for k in keys]

    async def add(self, key: str, amount: int) -> int:
        async with self.changed:
            value = int(self.data.get(key, b"0")) + amount
            self.data[key] = str(value).encode()
            self.changed.notify_all()
            return value

    async def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        async with self.changed:
            current = self.data.get(key)
            if current == expected or (current is None and not expected):
                self.data[key] = desired
                self.changed.notify_all()
                return desired
            return expected if current is None else current

    async def delete(self, key: str) -> bool:
        async with self.changed:
            return self.data.pop(key, None) is not None

    async def count(self) -> int:
        return len(self.data)

    async def has(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)


class RayStore(dist.Store):
    """A worker's view of the store actor, for init_process_group(store=...)."""

    def __init__(self, actor, timeout_s: float = 300.0):
        super().__init__()
        self.actor, self.timeout_s = actor, timeout_s

    def set(self, key, value):
        ray.get(self.actor.set.remote(key, value.encode() if isinstance(value, str) else bytes(value)))

    def get(self, key):
        return ray.get(self.actor.get.remote([key], self.timeout_s))[0]

    def add(self, key, amount):
        return ray.get(self.actor.add.remote(key, amount))

    def compare_set(self, key, expected, desired):
        return ray.get(self.actor.compare_set.remote(key, bytes(expected), bytes(desired)))

    def delete_key(self, key):
        return ray.get(self.actor.delete.remote(key))

    def num_keys(self):
        return ray.get(self.actor.count.remote())

    def check(self, keys):
        return ray.get(self.actor.has.remote(list(keys)))

    def set_timeout(self, timeout: timedelta):
        self.timeout_s = timeout.total_seconds()

    def wait(self, keys, timeout: timedelta | None = None):
        ray.get(self.actor.get.remote(list(keys), timeout.total_seconds() if timeout else self.timeout_s))


# ------------------------------------------------------------ the worker actor


@ray.remote
class _WorkerActor:
    def __init__(self, rank: int):
        self.rank = rank

    def __repr__(self) -> str:   # Ray prefixes the actor's console lines with this
        return f"worker {self.rank}"

    def where(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), os.getpid()

    def run(self, world_size: int, address, authkey: bytes, setup, threads: int, store) -> None:
        """The worker's whole life; returns after the master's shutdown."""
        interface = interface_of(ray.util.get_node_ip_address())
        if interface is not None:   # the interface the other nodes reach this one on
            os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
            os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
        serve(self.rank, world_size, connect(address, authkey), setup, threads, {"store": RayStore(store)})


# ------------------------------------------------------------ the master's side


def _ranges(ranks: list[int]) -> str:
    return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])


class RayLauncher(ConnectedWorkers):
    def __init__(self, n_workers: int, setup, *, threads_per_worker: int = 1, address: str | None = None,
                 log_dir: str | None = None, start_timeout: float = 600.0, console=None):
        """``address``: the Ray cluster to join ("auto", "HOST:PORT"; None: as
        ray.init: $RAY_ADDRESS or a cluster started on this machine, else a new
        local one). A process already connected to Ray keeps its cluster."""
        self.console = console or sys.stdout
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            ray.init(address=address, log_to_driver=True,
                     **({"include_dashboard": False} if address is None else {}))
        authkey = secrets.token_bytes(32)
        super().__init__(n_workers, ray.util.get_node_ip_address(), authkey)
        self.actors, self.runs, self.store, self.logs, self.where = [], [], None, {}, []
        deadline = time.monotonic() + start_timeout
        gpu = setup.device.startswith("cuda")
        bundle = {"GPU": 1} if gpu else {"CPU": threads_per_worker}
        self.pg = placement_group([bundle] * n_workers, strategy="PACK")
        try:
            self._place(bundle, deadline)
            self._start(setup, threads_per_worker, authkey, gpu, log_dir)
            self._connect(deadline)
        except BaseException:
            self.close()
            raise

    def _place(self, bundle: dict, deadline: float) -> None:
        """Wait for the placement group; number the ranks node after node."""
        try:
            ray.get(self.pg.ready(), timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            raise WorkerFailure(f"the Ray cluster cannot place {self.n} workers of {bundle} each (it has "
                                f"{ray.cluster_resources()}); add nodes or lower n_workers") from None
        on_node = placement_group_table(self.pg)["bundles_to_node_id"]   # bundle index -> node id
        nodes = list(dict.fromkeys(on_node[b] for b in sorted(on_node)))
        self.bundles = sorted(on_node, key=lambda b: (nodes.index(on_node[b]), b))   # rank -> bundle
        ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        self.node_ids = [on_node[b] for b in self.bundles]                     # rank -> Ray node id
        self.nodes = [ips.get(node, node) for node in self.node_ids]           # rank -> node address
        self.workers_per_node = [self.node_ids.count(node) for node in nodes]

    def _start(self, setup, threads: int, authkey: bytes, gpu: bool, log_dir: str | None) -> None:
        def placed(rank: int, **resources):
            return dict(resources, scheduling_strategy=PlacementGroupSchedulingStrategy(
                self.pg, placement_group_bundle_index=self.bundles[rank]))
        self.store = _StoreActor.options(**placed(0, num_cpus=0)).remote()
        resources = {"num_gpus": 1, "num_cpus": 0} if gpu else {"num_cpus": threads}
        self.actors = [_WorkerActor.options(**placed(r, **resources)).remote(r) for r in range(self.n)]
        self.where = ray.get([a.where.remote() for a in self.actors])   # rank -> (node address, pid)
        for node in dict.fromkeys(self.node_ids):
            ranks = [r for r in range(self.n) if self.node_ids[r] == node]
            print(f"[ray] workers {_ranges(ranks)} on node {self.nodes[ranks[0]]} ({node[:8]})", file=self.console,
                  flush=True)
        if log_dir is not None:
            self._log_to_files(log_dir, {(ip, str(pid)): r for r, (ip, pid) in enumerate(self.where)})
        self.runs = [a.run.remote(self.n, self.listener.address, authkey, setup, threads, self.store)
                     for a in self.actors]

    def _log_to_files(self, log_dir: str, rank_of: dict) -> None:
        """Each worker's lines, as Ray forwards them to the driver, into log_dir/worker_R.log
        (``rank_of``: (node address, pid as a string, as Ray sends it) -> rank)."""
        # NOTE: Ray has no public hook for the forwarded lines; this handler
        # sits beside the one that prints them on the console.
        from ray._private.worker import global_worker_stdstream_dispatcher
        os.makedirs(log_dir, exist_ok=True)
        self.logs = {r: open(os.path.join(log_dir, f"worker_{r}.log"), "a") for r in rank_of.values()}

        def write(data: dict) -> None:
            rank = rank_of.get((data.get("ip"), data.get("pid")))
            if rank is not None and not self.logs[rank].closed:
                self.logs[rank].writelines(line + "\n" for line in data.get("lines", ()))
                self.logs[rank].flush()
        self.log_handler = f"real_ext_logs_{id(self)}"
        global_worker_stdstream_dispatcher.add_handler(self.log_handler, write)

    def _exited(self) -> dict[int, str]:
        if not self.runs:
            return {}
        done, _ = ray.wait(self.runs, num_returns=len(self.runs), timeout=0)
        exited = {}
        for ref in done:
            rank = self.runs.index(ref)
            try:
                ray.get(ref)
                exited[rank] = "its actor stopped"
            except ray.exceptions.RayError as e:
                cause = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
                exited[rank] = f"its Ray actor on node {self.nodes[rank]} ended: {cause[:500]}"
        return exited

    def _stop(self, grace: float) -> None:
        """Wait for clean exits, then kill the actors and free their resources."""
        if self.runs:
            ray.wait(self.runs, num_returns=len(self.runs), timeout=grace)
        for actor in self.actors + ([self.store] if self.store is not None else []):
            ray.kill(actor)
        remove_placement_group(self.pg)
        if self.logs:
            time.sleep(0.5)   # the workers' last lines are on their way to the driver
            from ray._private.worker import global_worker_stdstream_dispatcher
            global_worker_stdstream_dispatcher.remove_handler(self.log_handler)
            for f in self.logs.values():
                f.close()
        if self.started_ray:
            ray.shutdown()
