"""The search for an execution plan: every MFC's device mesh and (dp, tp, pp,
micro-batches), scored by the simulator (real_ext/plan/simulate.py).

Device meshes are those of the ReaL paper: a power-of-two, aligned slice of
one node's workers, or an aligned run of whole nodes (a power of two of
them). Strategies on a mesh of n workers: every dp * tp * pp = n with tp
within a node and dividing the heads, pp at most the layers, dp dividing the
batch, and a power-of-two number of micro-batches from pp up to 64 (fewer
when a rank has fewer sequences).

From the best baseline, a greedy pass tries for each MFC its options that are
fastest alone (by the cost model, no simulation) and keeps what the
simulator says is better; then simulated annealing: a move re-draws one
MFC's strategy on its mesh, one of its fastest-alone options, or any option;
worse plans are taken with probability exp(-delta / T), T falling
geometrically over the time budget; infeasible plans (memory) are never
taken, so the result is never infeasible and never worse
than the baselines it started from. Baselines, named as in the paper:
symmetric (every MFC on all workers, one strategy: DeepSpeed-Chat's shape),
disjoint (each model on its own workers, split by compute: OpenRLHF's shape)
and a ReaLHF-style heuristic (generation data parallel over all workers with
the smallest tp that fits, training and inference on all workers with tp in
a node and pp across nodes).
"""
from __future__ import annotations

import dataclasses
import math
import random
import time

from real_ext.plan.cost import MFCWork, ModelInfo, Strategy
from real_ext.plan.simulate import SimResult, simulate
from real_ext.runtime.spec import Allocation, MFCSpec


MAX_MICROBATCHES = 64
TOP = 6   # options per MFC the greedy phase simulates


class PlanSearchError(ValueError):
    """No feasible plan (every candidate exceeds the memory), with why."""


@dataclasses.dataclass
class Problem:
    mfcs: list[MFCSpec]                 # the graph; their allocations are ignored
    models: dict[str, ModelInfo]
    works: dict[str, MFCWork]           # by MFC name
    cost: object                        # a real_ext.plan.cost.CostModel
    n_iterations: int = 2

    @property
    def hardware(self):
        return self.cost.hardware

    def __post_init__(self):
        self._seen: dict[tuple, SimResult] = {}

    def evaluate(self, allocations: dict[str, Allocation]) -> SimResult:
        """The simulated result of a plan (remembered: annealing revisits plans)."""
        key = tuple(sorted(allocations.items()))
        if key not in self._seen:
            self._seen[key] = simulate(self.mfcs, self.models, self.works, allocations, self.cost,
                                       n_iterations=self.n_iterations)
        return self._seen[key]


def _powers_of_two(n: int) -> list[int]:
    out, p = [], 1
    while p <= n:
        out.append(p)
        p *= 2
    return out


def candidate_meshes(hardware) -> list[tuple[int, ...]]:
    g, n = hardware.gpus_per_node, hardware.n_nodes
    meshes = []
    for size in _powers_of_two(g):
        for node in range(n):
            for start in range(0, g, size):
                meshes.append(tuple(range(node * g + start, node * g + start + size)))
    for k in _powers_of_two(n)[1:]:
        for first in range(0, n, k):
            meshes.append(tuple(range(first * g, (first + k) * g)))
    if n > 1 and n not in _powers_of_two(n):   # all nodes, when their count is not a power of two
        meshes.append(tuple(range(n * g)))
    return meshes


def candidate_strategies(size: int, model: ModelInfo | None, work: MFCWork, hardware) -> list[Strategy]:
    if model is None:                   # a rule-based reward: data parallel, no parameters
        return [Strategy(size, 1, 1)] if work.n_seqs % size == 0 else []
    cfg = model.config
    out = []
    for tp in _powers_of_two(min(size, hardware.gpus_per_node)):
        if cfg.num_heads % tp or (cfg.num_kv_heads % tp and tp % cfg.num_kv_heads):
            continue
        for pp in _powers_of_two(size // tp):
            dp = size // (tp * pp)
            if pp > cfg.num_layers or work.n_seqs % dp or work.n_seqs // dp < work.n_minibatches:
                continue
            # Micro-batches: at least one per stage, more to bound activation memory.
            per_rank = work.n_seqs // dp // (work.n_minibatches if work.interface == "train_step" else 1)
            for m in _powers_of_two(min(per_rank, MAX_MICROBATCHES)):
                if m >= pp or m == per_rank:
                    out.append(Strategy(dp, tp, pp, m))
    return out


def _allocation(mesh, s: Strategy) -> Allocation:
    return Allocation(tuple(mesh), dp=s.dp, tp=s.tp, pp=s.pp, n_microbatches=s.n_microbatches)


def _options(problem: Problem, mfc: MFCSpec, meshes) -> list[Allocation]:
    model = problem.models.get(mfc.model) if mfc.model else None
    work = problem.works[mfc.name]
    return [_allocation(mesh, s) for mesh in meshes
            for s in candidate_strategies(len(mesh), model, work, problem.hardware)]


def _best(problem: Problem, plans) -> tuple[dict, SimResult] | None:
    best = None
    for allocations in plans:
        result = problem.evaluate(allocations)
        if result.feasible and (best is None or result.iteration_time < best[1].iteration_time):
            best = (allocations, result)
    return best


def symmetric(problem: Problem):
    """Every MFC on all workers with one (dp, tp, pp) for all (micro-batches
    per MFC): the best such plan."""
    everyone = tuple(range(problem.hardware.n_workers))
    options = {m.name: _options(problem, m, [everyone]) for m in problem.mfcs}
    shared = None
    for m in problem.mfcs:
        if m.model is not None:
            mine = {(a.dp, a.tp, a.pp) for a in options[m.name]}
            shared = mine if shared is None else shared & mine
    plans = []
    for dp, tp, pp in sorted(shared or ()):
        resident = {name: problem.cost.resident_bytes(info, Strategy(dp, tp, pp)) for name, info in
                    problem.models.items()}
        plans.append({m.name: _pick_fastest(problem, m, [a for a in options[m.name] if m.model is None
                                                         or (a.dp, a.tp, a.pp) == (dp, tp, pp)],
                                            sum(resident.values()) - resident.get(m.model, 0))
                      for m in problem.mfcs})
    return _best(problem, plans)


def _model_share(problem: Problem) -> dict[str, float]:
    """Each model's share of the compute of one iteration (its MFCs' FLOPs, by the cost model's time on one worker)."""
    one = Strategy(1, 1, 1, 1)
    share: dict[str, float] = {}
    for m in problem.mfcs:
        if m.model is not None:
            share[m.model] = share.get(m.model, 0.0) + problem.cost.mfc_time(problem.models[m.model],
                                                                            problem.works[m.name], one)
    return share


def disjoint(problem: Problem):
    """Each model on its own workers (as many as its compute share asks, a
    power of two), all its MFCs there with the best strategy per MFC."""
    n = problem.hardware.n_workers
    share = _model_share(problem)
    names = sorted(share, key=share.get, reverse=True)
    if len(names) > n:
        return None
    total = sum(share.values())
    sizes = {name: max(1, 2 ** int(math.log2(max(1.0, n * share[name] / total)))) for name in names}
    while sum(sizes.values()) > n:      # shrink the largest until they fit
        big = max(sizes, key=sizes.get)
        sizes[big] //= 2
    meshes, start = {}, 0
    for name in names:
        meshes[name] = tuple(range(start, start + sizes[name]))
        start += sizes[name]
    allocations = {}
    for m in problem.mfcs:
        mesh = meshes[m.model] if m.model else meshes[names[0]]
        options = _options(problem, m, [mesh])
        if not options:
            return None
        allocations[m.name] = _pick_fastest(problem, m, options)
    return _best(problem, [allocations])


def _pick_fastest(problem: Problem, mfc: MFCSpec, options: list[Allocation], others: float = 0) -> Allocation:
    """The fastest option whose memory (its model's resident bytes and its
    peak, next to ``others`` bytes of other models) fits a worker; the
    smallest if none does."""
    if mfc.model is None:
        return options[0]
    model, work, cost = problem.models[mfc.model], problem.works[mfc.name], problem.cost

    def strategy(a):
        return Strategy(a.dp, a.tp, a.pp, a.n_microbatches)

    def memory(a):
        return cost.resident_bytes(model, strategy(a)) + cost.peak_bytes(model, work, strategy(a))
    fits = [a for a in options if memory(a) + others <= problem.hardware.mem_bytes]
    if not fits:
        return min(options, key=memory)
    return min(fits, key=lambda a: cost.mfc_time(model, work, strategy(a)))


def heuristic(problem: Problem):
    """ReaLHF-style: every MFC on all workers; generation data parallel with
    the smallest tp that fits; training and inference with tp within a node
    and pp across nodes; micro-batches the fastest that fit."""
    hw = problem.hardware
    everyone = tuple(range(hw.n_workers))
    allocations = {}
    for m in problem.mfcs:
        options = _options(problem, m, [everyone])
        if not options:
            return None
        if m.model is not None and m.interface == "generate":
            for tp in _powers_of_two(hw.gpus_per_node):
                mine = [a for a in options if a.tp == tp and a.pp == 1]
                if mine and _fits(problem, m, _pick_fastest(problem, m, mine)):
                    options = mine
                    break
        elif m.model is not None:
            tp = max(a.tp for a in options)
            pp = max(1, hw.n_workers // (tp * hw.gpus_per_node) if hw.n_nodes > 1 else 1)
            mine = [a for a in options if a.tp == tp and a.pp == min(pp, max(b.pp for b in options if b.tp == tp))]
            options = mine or options
        allocations[m.name] = options
    # Micro-batches last: the fastest that fit next to every model's parameters under its home strategy.
    homes = {}
    for m in problem.mfcs:
        if m.model is not None and (m.interface == "train_step" or m.model not in homes):
            homes[m.model] = allocations[m.name][0]
    resident = {name: problem.cost.resident_bytes(problem.models[name], Strategy(a.dp, a.tp, a.pp))
                for name, a in homes.items()}
    for m in problem.mfcs:
        allocations[m.name] = _pick_fastest(problem, m, allocations[m.name],
                                            sum(resident.values()) - resident.get(m.model, 0))
    return _best(problem, [allocations])


def _ranked(problem: Problem, mfc: MFCSpec, options: list[Allocation]) -> list[Allocation]:
    """Options that fit a worker alone, by their time alone (no reallocation,
    no sharing), fastest first; one per (mesh size, dp, tp, pp) and the first
    mesh of each size, so the list spans strategies rather than placements."""
    if mfc.model is None:
        return options
    model, work = problem.models[mfc.model], problem.works[mfc.name]
    seen, out = set(), []
    for a in sorted((a for a in options if _fits(problem, mfc, a)),
                    key=lambda a: problem.cost.mfc_time(model, work, Strategy(a.dp, a.tp, a.pp, a.n_microbatches))):
        key = (len(a.mesh), a.dp, a.tp, a.pp)
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


def _fits(problem: Problem, mfc: MFCSpec, a: Allocation) -> bool:
    model, work, cost = problem.models[mfc.model], problem.works[mfc.name], problem.cost
    s = Strategy(a.dp, a.tp, a.pp, a.n_microbatches)
    return cost.resident_bytes(model, s) + cost.peak_bytes(model, work, s) <= problem.hardware.mem_bytes


BASELINES = {"symmetric": symmetric, "disjoint": disjoint, "heuristic": heuristic}


@dataclasses.dataclass
class SearchResult:
    allocations: dict[str, Allocation]
    result: SimResult
    baselines: dict[str, tuple[dict, SimResult] | None]
    evaluated: int
    seconds: float


def search(problem: Problem, *, time_budget_s: float = 30.0, max_steps: int = 20000, seed: int = 0,
           t_start: float = 0.05, t_end: float = 1e-4) -> SearchResult:
    """Simulated annealing over the MFCs' allocations, from the best baseline."""
    t0 = time.time()
    rng = random.Random(seed)
    baselines = {name: fn(problem) for name, fn in BASELINES.items()}
    feasible = [b for b in baselines.values() if b is not None]
    if not feasible:
        raise PlanSearchError("no baseline plan fits the workers' memory; use more or larger workers, "
                              "a smaller model or batch, or bfloat16")
    allocations, result = min(feasible, key=lambda b: b[1].iteration_time)
    current, current_time = dict(allocations), result.iteration_time
    best, best_result = dict(current), result
    meshes = candidate_meshes(problem.hardware)
    options = {m.name: _options(problem, m, meshes) for m in problem.mfcs}
    names = [m.name for m in problem.mfcs if len(options[m.name]) > 1]
    # Each MFC's options that fit alone, fastest alone first: the moves worth a simulation.
    ranked = {m.name: _ranked(problem, m, options[m.name]) for m in problem.mfcs}
    evaluated = len(feasible)

    def consider(candidate, temperature: float = 0.0) -> None:
        """Move to ``candidate`` if it is feasible and better, or (annealing)
        worse by delta with probability exp(-delta / temperature)."""
        nonlocal current, current_time, best, best_result, evaluated
        r = problem.evaluate(candidate)
        evaluated += 1
        if not r.feasible:
            return
        delta = (r.iteration_time - current_time) / current_time
        if delta < 0 or (temperature > 0 and rng.random() < math.exp(-delta / temperature)):
            current, current_time = candidate, r.iteration_time
            if r.iteration_time < best_result.iteration_time:
                best, best_result = dict(candidate), r

    # Greedy first: for every MFC in turn, its TOP fastest-alone options in the current plan.
    for _ in range(2):
        for name in names:
            for a in ranked[name][:TOP]:
                if time.time() - t0 > time_budget_s / 2:
                    break
                if a != current[name]:
                    consider(dict(current, **{name: a}))
    step = 0
    while names and step < max_steps and time.time() - t0 < time_budget_s:
        frac = max(step / max_steps, (time.time() - t0) / time_budget_s)
        temperature = t_start * (t_end / t_start) ** frac   # relative to the current iteration time
        name = rng.choice(names)
        candidate = dict(current)
        move = rng.random()
        if move < 0.4:   # same mesh, another strategy
            same = [a for a in options[name] if a.mesh == current[name].mesh and a != current[name]]
            candidate[name] = rng.choice(same) if same else rng.choice(options[name])
        elif move < 0.8 and ranked[name]:   # one of the fastest alone
            candidate[name] = rng.choice(ranked[name][:4 * TOP])
        else:
            candidate[name] = rng.choice(options[name])
        step += 1
        consider(candidate, temperature)
    return SearchResult(best, best_result, baselines, evaluated, time.time() - t0)
