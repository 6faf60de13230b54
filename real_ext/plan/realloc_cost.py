"""What moving parameters and data between layouts costs, for the simulator.

Reallocation traffic comes from the real planner (real_ext/realloc/plan.py):
the bytes every (source, destination) worker pair exchanges under the plan
the runtime would execute. Its time: each worker sends its pairs one after
the other and receives likewise, each message costing ``cost.p2p_time``
(latency + bytes / link bandwidth), plus its local copies (p2p_time from a
worker to itself); the reallocation takes as long as the busiest worker's
max(send, receive) + local copy time.

Large models over many workers take long to plan: a 70B model over 128
workers takes 0.6-1.8 s for the two layouts and the plan (Python builds the
shard lists). Above ``REDUCE_ABOVE`` layer shards the plan is made on a
reduced model instead (0.02-0.3 s): the embedding, final norm and head
exactly, and of the transformer blocks one representative per (source stage,
destination stage) pair, its bytes weighted by the number of blocks that pair
holds. Every block of such a group moves the same boxes between the same
workers, so the total bytes are exact, and every pair's bytes too up to which
source replica the planner picks (exact in the 70B cases measured). Planning
a 2-layer copy and scaling by num_layers / 2 would not be: a 2-layer model's
stage boundaries differ from the real ones, and pp > 2 does not exist for it.

Data transfer follows real_ext/runtime/transfer.py: every worker of a
consumer's mesh receives its data-parallel rank's share of each key from a
worker holding it (nothing when it holds it already), the senders spread by
fewest samples assigned so far. Samples are taken to be of equal length, so
the master's token-balanced split is an even one. Each (src, dst) pair costs
its messages (a pickled header, one per key) and the host work around them
(cost.transfer_message_time).
"""
from __future__ import annotations

import dataclasses
import functools
import weakref

import torch

from real_ext.model.params import param_specs, stage_units
from real_ext.model.shards import ModelShards
from real_ext.parallel.layout import ParallelLayout
from real_ext.realloc.layout import Layout
from real_ext.realloc.plan import plan

# Layer shards (workers x blocks they hold, summed over both layouts) above
# which the reduced plan is used; a full plan of a 7B model at this size took 0.2 s.
REDUCE_ABOVE = 2048


def layout_key(a) -> tuple:
    """What decides where parameters sit (micro-batches do not)."""
    return (tuple(a.mesh), a.dp, a.tp, a.pp)


@dataclasses.dataclass(frozen=True)
class Traffic:
    pair_bytes: dict          # (src worker, dst worker) -> bytes sent, src != dst
    local_bytes: dict         # worker -> bytes copied within it
    bytes_moved: int          # sum of pair_bytes: the planner's bytes_moved
    exact: bool               # False: planned on the reduced model (see module docstring)


def comm_time(pair_bytes: dict, cost, local_bytes: dict | None = None) -> float:
    """The busiest worker's max(send time, receive time) plus its local
    copies (``cost.p2p_time`` from a worker to itself); 0 when nothing moves."""
    pair_seconds = {(a, b): cost.p2p_time(n, a, b) for (a, b), n in pair_bytes.items() if n > 0 and a != b}
    local = {w: cost.p2p_time(n, w, w) for w, n in (local_bytes or {}).items() if n > 0}
    return busiest(pair_seconds, local)


def busiest(pair_seconds: dict, local_seconds: dict | None = None) -> float:
    """The busiest worker's max(time sending, time receiving) plus its local
    work, given each (src, dst) pair's seconds."""
    send: dict[int, float] = {}
    recv: dict[int, float] = {}
    for (a, b), t in pair_seconds.items():
        send[a] = send.get(a, 0.0) + t
        recv[b] = recv.get(b, 0.0) + t
    local = local_seconds or {}
    workers = set(send) | set(recv) | set(local)
    return max((max(send.get(w, 0.0), recv.get(w, 0.0)) + local.get(w, 0.0) for w in workers), default=0.0)


# ---------------------------------------------------------------- reallocation

def realloc_traffic(model, src, dst, workers_per_node: int) -> Traffic:
    """Bytes per worker pair when ``model`` (a ModelInfo) moves from
    allocation ``src`` to ``dst``, from the real planner."""
    return _traffic(model.config, model.head, model.dtype, workers_per_node, layout_key(src), layout_key(dst))


def realloc_time(model, src, dst, cost) -> float:
    """Seconds to reallocate ``model`` from allocation ``src`` to ``dst``."""
    if layout_key(src) == layout_key(dst):
        return 0.0
    key = (model.config, model.head, model.dtype, layout_key(src), layout_key(dst))
    times = _times_of(cost)
    if key not in times:
        if len(times) > MAX_REMEMBERED:
            times.clear()
        t = realloc_traffic(model, src, dst, cost.hardware.gpus_per_node)
        times[key] = comm_time(t.pair_bytes, cost, t.local_bytes)
    return times[key]


# id(cost) -> {(model, src, dst): seconds, ("data", ...): data_transfer's answer},
# dropped with the cost model (which is never changed once made). Timing 16k
# worker pairs costs ~20 ms, planning a data transfer over 128 workers ~30 ms;
# a search asks for the same ones often.
_TIMES: dict[int, dict] = {}
MAX_REMEMBERED = 100_000


def _times_of(cost) -> dict:
    times = _TIMES.get(id(cost))
    if times is None:
        times = _TIMES[id(cost)] = {}
        weakref.finalize(cost, _TIMES.pop, id(cost), None)
    return times


def _n_layer_shards(config, key) -> int:
    mesh, _, _, pp = key
    return len(mesh) * config.num_layers // pp


@functools.lru_cache(maxsize=256)
def _traffic(config, head, dtype, workers_per_node, src_key, dst_key) -> Traffic:
    torch_dtype = getattr(torch, dtype)
    element = torch.empty((), dtype=torch_dtype).element_size()
    reduce = _n_layer_shards(config, src_key) + _n_layer_shards(config, dst_key) > REDUCE_ABOVE
    weights = _block_weights(config, head, src_key[3], dst_key[3]) if reduce else None
    layouts = [_layout(config, head, key, torch_dtype, workers_per_node, weights) for key in (src_key, dst_key)]
    p = plan(*layouts)
    t = p.tensor
    # Columns: src rank, dst rank, param index, r0, r1, c0, c1, ... (see csrc/registration.cpp).
    nbytes = (t[:, 4] - t[:, 3]) * (t[:, 6] - t[:, 5]) * element
    if weights is not None:
        units = _param_units(config, head, src_key[3])
        per_param = torch.tensor([weights.get(units[name], 1) for name in layouts[0].params], dtype=torch.int64)
        nbytes = nbytes * per_param[t[:, 2]]
    remote = t[:, 0] != t[:, 1]
    pair_bytes = _sum_by(t[remote, 0] * (1 << 32) + t[remote, 1], nbytes[remote])
    pair_bytes = {(k >> 32, k & 0xFFFFFFFF): v for k, v in pair_bytes.items()}
    local_bytes = _sum_by(t[~remote, 0], nbytes[~remote])
    return Traffic(pair_bytes, local_bytes, sum(pair_bytes.values()), weights is None)


def _sum_by(keys: torch.Tensor, values: torch.Tensor) -> dict[int, int]:
    if keys.numel() == 0:
        return {}
    uniq, inverse = torch.unique(keys, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.int64).index_add_(0, inverse, values)
    return dict(zip(uniq.tolist(), sums.tolist()))


def _param_units(config, head, pp) -> dict[str, int]:
    return {s.name: s.unit for s in param_specs(config, head, pp) if not s.tied_to}


def _block_weights(config, head, src_pp: int, dst_pp: int) -> dict[int, int]:
    """Representative block unit -> how many blocks it stands for: one per
    (source stage, destination stage) pair."""
    def stage_of(pp):
        return {u: s for s, units in enumerate(stage_units(config, pp, head)) for u in units}
    src_stage, dst_stage = stage_of(src_pp), stage_of(dst_pp)
    groups: dict[tuple[int, int], list[int]] = {}
    for unit in range(1, config.num_layers + 1):
        groups.setdefault((src_stage[unit], dst_stage[unit]), []).append(unit)
    return {units[0]: len(units) for units in groups.values()}


def _layout(config, head, key, dtype, workers_per_node, weights) -> Layout:
    mesh, dp, tp, pp = key
    if weights is None:
        return Layout.from_config(config, list(mesh), dp, tp, pp, head=head, dtype=dtype,
                                  workers_per_node=workers_per_node)
    shards_of = ModelShards(config, head, ParallelLayout(tuple(mesh), dp, tp, pp))
    keep = {0, config.num_layers + 1} | set(weights)
    # NOTE: only the kept parameters get shards, so flat offsets differ from the
    # runtime's; the planner's byte counts do not depend on them.
    shards_of.specs = [s for s in shards_of.specs if s.unit in keep]
    return Layout.from_shards(shards_of, dtype, workers_per_node)


# ---------------------------------------------------------------- data transfer

@dataclasses.dataclass(frozen=True)
class Holdings:
    """Who holds which samples of one key: (first, stop, workers) pieces
    (sample indices of the step's batch)."""
    pieces: tuple

    @staticmethod
    def of(allocation, n_samples: int, last_stage_only: bool = False) -> "Holdings":
        """What an MFC leaves behind: each data-parallel rank's even share on
        its workers (an inference's only on its last pipeline stage)."""
        layout = allocation.layout
        stages = [layout.pp - 1] if last_stage_only else range(layout.pp)
        return Holdings(tuple((first, stop, frozenset(layout.rank(p, d, t) for p in stages for t in range(layout.tp)))
                              for d, (first, stop) in enumerate(_shares(n_samples, layout.dp))))

    def plus(self, received) -> "Holdings":
        return Holdings(self.pieces + tuple(received))

    def holders(self, first: int, stop: int) -> list[tuple[int, int, frozenset]]:
        """[first, stop) cut where the holders change: (a, b, workers)."""
        cuts = sorted({first, stop} | {x for a, b, _ in self.pieces for x in (a, b) if first < x < stop})
        return [(a, b, frozenset().union(*(w for lo, hi, w in self.pieces if lo <= a and b <= hi)))
                for a, b in zip(cuts[:-1], cuts[1:])]


def _shares(n: int, dp: int) -> list[tuple[int, int]]:
    return [(d * n // dp, (d + 1) * n // dp) for d in range(dp)]


def needs_of(allocation, n_samples: int) -> dict[int, tuple[int, int]]:
    """Every worker of a consumer's mesh -> its data-parallel rank's share
    (the master's split, with samples of equal length)."""
    layout = allocation.layout
    shares = _shares(n_samples, layout.dp)
    return {w: shares[layout.coord(w).dp] for w in layout.mesh}


@dataclasses.dataclass
class Message:
    """What one worker sends another in a data transfer."""
    nbytes: int = 0
    n_keys: int = 0
    n_samples: int = 0     # the most samples of any one key


def transfer_pairs(needs: dict[int, tuple[int, int]], keys: list[tuple[Holdings, int]]) -> tuple[dict, list]:
    """((src, dst) -> Message, received pieces) so that every worker in
    ``needs`` (worker -> [first, stop) samples) gets each key, given as (who
    holds it, bytes per sample). Senders are chosen as plan_transfers does;
    the received pieces are what every key's holdings gain."""
    load: dict[int, int] = {}
    messages: dict[tuple[int, int], Message] = {}
    for holdings, per_sample in keys:
        samples: dict[tuple[int, int], int] = {}
        cut: dict[tuple[int, int], list] = {}   # share -> its holders: every tp x pp worker of a dp rank asks
        for dst in sorted(needs):
            share = needs[dst]
            if share not in cut:
                cut[share] = holdings.holders(*share)
            for a, b, workers in cut[share]:
                if not workers:
                    raise KeyError(f"no worker holds samples {a}..{b - 1}")
                if dst in workers:
                    continue
                for src, n in _spread(b - a, workers, load):
                    samples[(src, dst)] = samples.get((src, dst), 0) + n
        for pair, n in samples.items():
            m = messages.setdefault(pair, Message())
            m.nbytes += n * per_sample
            m.n_keys += 1
            m.n_samples = max(m.n_samples, n)
    by_share: dict[tuple[int, int], set] = {}
    for dst, share in needs.items():
        by_share.setdefault(share, set()).add(dst)
    return messages, [(a, b, frozenset(w)) for (a, b), w in sorted(by_share.items())]


def message_time(messages: dict, cost) -> float:
    """How long the busiest worker of a data transfer works (``messages``:
    (src, dst) -> Message, costed by ``cost.transfer_message_time``)."""
    return busiest({(a, b): cost.transfer_message_time(m.nbytes, m.n_keys, m.n_samples, a, b)
                    for (a, b), m in messages.items()})


def _spread(n: int, workers, load: dict[int, int]) -> list[tuple[int, int]]:
    """Give n samples one at a time to the least-loaded worker (ties: the
    lowest rank), as plan_transfers does, by water-filling: the k least
    loaded are raised to a common level, the remainder go one each to the
    lowest ranks among them."""
    order = sorted((load.get(w, 0), w) for w in workers)
    level, filled, k = order[0][0], 0, 1    # order[:k] sit at `level` once `filled` samples are given
    while True:
        if k < len(order) and order[k][0] == level:
            k += 1
            continue
        room = (order[k][0] - level) * k if k < len(order) else n - filled
        if filled + room >= n:
            steps, extra = divmod(n - filled, k)
            level += steps
            break
        filled += room
        level = order[k][0]
    given = {w: level - start for start, w in order[:k]}
    for w in sorted(given)[:extra]:
        given[w] += 1
    given = sorted((w, g) for w, g in given.items() if g > 0)
    for w, g in given:
        load[w] = load.get(w, 0) + g
    return given


def data_transfer(dst_alloc, n_samples: int, keys: tuple, cost) -> tuple[set, float, list]:
    """(workers taking part, seconds, received pieces) of moving ``keys``
    ((Holdings, bytes per sample) pairs) to the workers of ``dst_alloc``;
    remembered per cost model, since a search asks for the same moves often."""
    times = _times_of(cost)
    key = ("data", layout_key(dst_alloc), n_samples, keys)
    if key not in times:
        if len(times) > MAX_REMEMBERED:
            times.clear()
        messages, received = transfer_pairs(needs_of(dst_alloc, n_samples), list(keys))
        times[key] = ({w for pair in messages for w in pair}, message_time(messages, cost), received)
    return times[key]


def transfer_time(nbytes_per_seq: int, n_seqs: int, src_alloc, dst_alloc, cost, *,
                  last_stage_only: bool = False) -> float:
    """Seconds to move one key of ``n_seqs`` sequences (``nbytes_per_seq``
    each) from the MFC that made it (``src_alloc``; ``last_stage_only`` for an
    inference, whose output stays on its last pipeline stage) to the workers
    of ``dst_alloc``."""
    held = Holdings.of(src_alloc, n_seqs, last_stage_only)
    messages, _ = transfer_pairs(needs_of(dst_alloc, n_seqs), [(held, nbytes_per_seq)])
    return message_time(messages, cost)
