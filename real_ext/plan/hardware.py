"""The machines a plan is searched for: a cluster of ``n_nodes`` nodes with
``gpus_per_node`` workers each, described by the few numbers the cost model
needs (compute, memory, links). Presets hold public datasheet figures for
NVIDIA A100, H100 and H200 nodes; the local CPU "cluster" (worker processes on
this machine) is described by a measured profile (profile.py).

    hw = parse_cluster("16x8xH100")           # 16 DGX-like nodes of 8 H100
    hw = parse_cluster("1x4xCPU", profile="profile.json")

Workers are global ranks 0..N-1, node-major: rank r sits on node r // gpus_per_node.
"""
from __future__ import annotations

import dataclasses
import json
import re

GiB = 1 << 30
MiB = 1 << 20

# Memory the framework cannot use: CUDA context, NCCL buffers, allocator
# fragmentation. An assumption (a few GiB is what a PyTorch + NCCL process
# typically holds outside its tensors), not a measured figure.
RESERVED_GPU_BYTES = 4 * GiB


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    n_nodes: int
    gpus_per_node: int            # workers per node
    peak_flops: float             # dense bf16 FLOP/s per worker (fp32 for CPU)
    mem_bw: float                 # bytes/s per worker (HBM)
    mem_bytes: int                # usable memory per worker
    intra_bw: float               # bytes/s per worker, within a node (NVLink)
    inter_bw: float               # bytes/s per worker, between nodes (InfiniBand)
    latency: float = 5e-6         # per message, seconds
    mfu: float = 0.5              # efficiency of large matmuls (training/prefill)
    decode_bw_eff: float = 0.6    # fraction of mem_bw reached by decoding
    shared_cores: int | None = None  # CPU only: all workers share this many cores
    # The runtime's fixed cost per operation (master -> workers -> reply). GPU
    # clusters: an assumption (a pickled message each way over TCP plus Python
    # dispatch, about a millisecond); CPU workers: measured by the profile.
    op_latency: float = 1e-3
    # The runtime's host-side work around its messages, in seconds: per data
    # transfer between two workers (pickling the header, gathering the keys)
    # and per sample moved (slicing and storing it); building a model for a
    # reallocation into a new layout, fixed and per block. CPU workers: measured
    # by the profile. GPU clusters: the same Python code on the host, so what
    # the CPU profile measured on a 2-core EPYC (2026-11-26: 0.42 ms, 20 us,
    # 0.14 ms, 0.31 ms), rounded: an assumption.
    transfer_fixed: float = 5e-4
    transfer_per_sample: float = 2e-5
    build_fixed: float = 2e-4
    build_per_block: float = 3e-4
    # CPU only: measured (worker count, slowdown) pairs of processes computing
    # at once; empty: ideal sharing of shared_cores.
    contention_curve: tuple = ()

    def __post_init__(self):
        if self.n_nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(f"hardware {self.name!r}: n_nodes={self.n_nodes} and gpus_per_node="
                             f"{self.gpus_per_node} must be >= 1")
        for f in ("peak_flops", "mem_bw", "mem_bytes", "intra_bw", "inter_bw"):
            if not getattr(self, f) > 0:
                raise ValueError(f"hardware {self.name!r}: {f}={getattr(self, f)} must be > 0")
        if not (0 < self.mfu <= 1 and 0 < self.decode_bw_eff <= 1):
            raise ValueError(f"hardware {self.name!r}: mfu={self.mfu} and decode_bw_eff={self.decode_bw_eff} "
                             f"must be in (0, 1]")

    @property
    def n_workers(self) -> int:
        return self.n_nodes * self.gpus_per_node

    def node(self, rank: int) -> int:
        if not 0 <= rank < self.n_workers:
            raise ValueError(f"worker {rank} is outside this cluster's workers 0..{self.n_workers - 1}")
        return rank // self.gpus_per_node

    def link_bw(self, a: int, b: int) -> float:
        """Bytes/s from worker a to worker b. a == b is a local copy, which
        reads and writes every byte: half the memory bandwidth."""
        if a == b:
            self.node(a)
            return self.mem_bw / 2
        return self.intra_bw if self.node(a) == self.node(b) else self.inter_bw

    def contention(self, n_busy: int) -> float:
        """How much slower compute runs when ``n_busy`` workers compute at once:
        CPU workers share ``shared_cores`` cores (as the profile measured them
        shared, when it did: linear between measured counts, and beyond the
        last one growing as n_busy); GPUs share nothing."""
        if self.shared_cores is None or n_busy <= 1:
            return 1.0
        if not self.contention_curve:
            return max(1.0, n_busy / self.shared_cores)
        last, slowest = self.contention_curve[-1]
        if n_busy >= last:
            return slowest * n_busy / last
        for (a, sa), (b, sb) in zip(self.contention_curve, self.contention_curve[1:]):
            if a <= n_busy <= b:
                return sa + (sb - sa) * (n_busy - a) / (b - a)
        return self.contention_curve[0][1]   # below the first measured count


# Per-GPU figures from NVIDIA's datasheets; one InfiniBand NIC per GPU as in
# DGX systems. NVLink figures are per direction (the datasheets quote the
# bidirectional total, twice as much). Memory is nvidia-smi's memory.total
# minus RESERVED_GPU_BYTES.
_GPUS = {
    # A100 SXM4 80GB datasheet: 312 TFLOPS BF16 dense, HBM2e 2,039 GB/s,
    # NVLink 3 600 GB/s bidirectional. DGX A100: 8x ConnectX-6 HDR 200 Gb/s
    # = 25 GB/s per GPU. nvidia-smi: 81920 MiB.
    "A100-80GB": dict(peak_flops=312e12, mem_bw=2.039e12, mem_bytes=81920 * MiB - RESERVED_GPU_BYTES,
                      intra_bw=300e9, inter_bw=25e9),
    # H100 SXM5 80GB datasheet: 1,979 TFLOPS BF16 "with sparsity" = 989.5 dense,
    # HBM3 3.35 TB/s, NVLink 4 900 GB/s bidirectional = 450 GB/s per direction.
    # DGX H100: 8x ConnectX-7 400 Gb/s = 50 GB/s per GPU. nvidia-smi: 81559 MiB.
    "H100-80GB": dict(peak_flops=989.5e12, mem_bw=3.35e12, mem_bytes=81559 * MiB - RESERVED_GPU_BYTES,
                      intra_bw=450e9, inter_bw=50e9),
    # H200 SXM 141GB datasheet: the H100's compute (989.5 TFLOPS BF16 dense),
    # HBM3e 4.8 TB/s, NVLink 900 GB/s bidirectional. DGX H200: 8x ConnectX-7
    # 400 Gb/s = 50 GB/s per GPU. nvidia-smi: 143771 MiB.
    "H200": dict(peak_flops=989.5e12, mem_bw=4.8e12, mem_bytes=143771 * MiB - RESERVED_GPU_BYTES,
                 intra_bw=450e9, inter_bw=50e9),
}
# A DGX node holds 8 GPUs; a preset is one such node.
PRESETS: dict[str, Hardware] = {name: Hardware(name=name, n_nodes=1, gpus_per_node=8, **spec)
                                for name, spec in _GPUS.items()}
_ALIASES = {"A100": "A100-80GB", "H100": "H100-80GB", "H100-SXM": "H100-80GB", "H200-141GB": "H200"}

_FORMAT = "NODESxGPUSxNAME, e.g. '16x8xH100' (16 nodes of 8 H100) or '1x4xCPU' (4 workers on this machine)"


def parse_cluster(spec: str, profile=None) -> Hardware:
    """'16x8xH100' -> 16 nodes of 8 H100. NAME is a preset (A100-80GB,
    H100-80GB, H200, or A100 / H100 for short) or CPU: worker processes on this
    machine, described by ``profile`` (a run_profile JSON path or its dict)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*([A-Za-z0-9_-]+)\s*", spec or "")
    if m is None:
        raise ValueError(f"cluster {spec!r} is not of the form {_FORMAT}")
    n_nodes, per_node, name = int(m[1]), int(m[2]), m[3]
    if n_nodes < 1 or per_node < 1:
        raise ValueError(f"cluster {spec!r}: nodes and workers per node must be >= 1 ({_FORMAT})")
    if name.upper() == "CPU":
        if profile is None:
            raise ValueError(f"cluster {spec!r}: CPU workers are described by a measured profile; run "
                             f"real_ext.plan.profile.run_profile(path) and pass parse_cluster(spec, profile=path)")
        if n_nodes != 1:
            raise ValueError(f"cluster {spec!r}: CPU workers are processes on this one machine; use 1xNxCPU")
        return cpu_hardware(profile, per_node)
    key = {k.upper(): k for k in list(PRESETS) + list(_ALIASES)}.get(name.upper())
    if key is None:
        raise ValueError(f"cluster {spec!r}: unknown hardware {name!r}; known: {', '.join(PRESETS)}, CPU")
    base = PRESETS[_ALIASES.get(key, key)]
    return dataclasses.replace(base, n_nodes=n_nodes, gpus_per_node=per_node)


def cpu_hardware(profile, n_workers: int) -> Hardware:
    """``n_workers`` worker processes on the profiled machine. The numbers are
    the profile's measurements at its thread count per worker (matmul FLOP/s,
    copy bandwidth, gloo point-to-point over loopback), so mfu and
    decode_bw_eff are 1: nothing is left to discount. Memory is the machine's
    RAM split evenly; every worker is on the one node."""
    profile = load_profile(profile)
    machine, p2p, transfer = profile["machine"], profile["comm"]["p2p"], profile["comm"]["transfer"]
    contention = profile["contention"]
    return Hardware(name="CPU", n_nodes=1, gpus_per_node=n_workers, peak_flops=machine["matmul_flops"],
                    mem_bw=machine["mem_bw"], mem_bytes=machine["ram_bytes"] // n_workers,
                    intra_bw=p2p["bw"], inter_bw=p2p["bw"], latency=p2p["latency"], mfu=1.0, decode_bw_eff=1.0,
                    shared_cores=machine["cpu_count"], op_latency=profile["runtime"]["op_latency"],
                    transfer_fixed=transfer["fixed_s"], transfer_per_sample=transfer["per_sample_s"],
                    build_fixed=profile["build"]["fixed_s"], build_per_block=profile["build"]["per_block_s"],
                    contention_curve=tuple(zip(contention["workers"], contention["slowdown"])))


PROFILE_VERSION = 2   # what real_ext.plan.profile writes


def load_profile(profile) -> dict:
    """A run_profile JSON (path or dict), checked to be of this version."""
    path = profile if isinstance(profile, str) else None
    if path is not None:
        with open(path) as f:
            profile = json.load(f)
    if profile.get("version") != PROFILE_VERSION:
        rerun = f"real-ext profile --out {path}" if path else "real-ext profile"
        raise ValueError(f"{path or 'the profile'}: profile version {profile.get('version')!r}, this real_ext "
                         f"reads version {PROFILE_VERSION}; re-run `{rerun}`")
    return profile
