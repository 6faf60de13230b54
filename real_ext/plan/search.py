"""The search for an execution plan: every MFC's device mesh and (dp, tp, pp,
micro-batches), scored by the simulator (real_ext/plan/simulate.py).

Device meshes are those of the ReaL paper: a power-of-two, aligned slice of
one node's workers, or an aligned run of whole nodes (a power of two of
them). Strategies on a mesh of n workers: every dp * tp * pp = n with tp
within a node and dividing the heads, pp at most the layers, dp dividing the
batch; training gets micro-batches in {pp, 2 pp}, other calls one per stage.

Simulated annealing walks from the best baseline: a move re-draws one MFC's
mesh, or its strategy on the same mesh; worse plans are taken with
probability exp(-delta / T), T falling geometrically; infeasible plans
(memory) are never taken, so the result is never infeasible and never worse
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

    def evaluate(self, allocations: dict[str, Allocation]) -> SimResult:
        return simulate(self.mfcs, self.models, self.works, allocations, self.cost, n_iterations=self.n_iterations)


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
            if work.interface == "train_step":
                for m in (pp, 2 * pp):
                    if work.n_seqs // dp // work.n_minibatches >= m:
                        out.append(Strategy(dp, tp, pp, m))
            else:
                out.append(Strategy(dp, tp, pp, pp))
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
    """Every MFC on all workers with one (dp, tp, pp) for all: the best such plan."""
    everyone = tuple(range(problem.hardware.n_workers))
    shared = None
    for mfc in problem.mfcs:
        model = problem.models.get(mfc.model) if mfc.model else None
        mine = {(s.dp, s.tp, s.pp) for s in candidate_strategies(len(everyone), model, problem.works[mfc.name],
                                                                  problem.hardware)}
        if mfc.model is not None:
            shared = mine if shared is None else shared & mine
    plans = []
    for dp, tp, pp in sorted(shared or ()):
        plans.append({m.name: _allocation(everyone, Strategy(dp, tp, pp, pp) if m.model else Strategy(
            len(everyone), 1, 1)) for m in problem.mfcs})
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


def _pick_fastest(problem: Problem, mfc: MFCSpec, options: list[Allocation]) -> Allocation:
    if mfc.model is None:
        return options[0]
    model, work = problem.models[mfc.model], problem.works[mfc.name]
    return min(options, key=lambda a: problem.cost.mfc_time(model, work, Strategy(a.dp, a.tp, a.pp, a.n_microbatches)))


def heuristic(problem: Problem):
    """ReaLHF-style: generation data parallel on all workers with the smallest
    tp that fits; training and inference on all workers, tp in a node, pp
    across nodes."""
    hw = problem.hardware
    everyone = tuple(range(hw.n_workers))
    allocations = {}
    for m in problem.mfcs:
        options = _options(problem, m, [everyone])
        if not options:
            return None
        if m.interface == "generate":
            options.sort(key=lambda a: (a.tp * a.pp, a.pp))
        elif m.model is not None:
            tp = min(hw.gpus_per_node, max(a.tp for a in options))
            options.sort(key=lambda a: (a.tp != tp, a.pp != max(1, hw.n_workers // (tp * hw.gpus_per_node)), a.pp))
        allocations[m.name] = options[0]
    # The first option may not fit: fall back to the fastest feasible of each MFC's options by simulation.
    found = _best(problem, [allocations])
    return found


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
    evaluated, step = len(feasible), 0
    while names and step < max_steps and time.time() - t0 < time_budget_s:
        frac = step / max_steps
        temperature = t_start * (t_end / t_start) ** frac   # relative to the current iteration time
        name = rng.choice(names)
        candidate = dict(current)
        if rng.random() < 0.5:   # same mesh, another strategy
            same = [a for a in options[name] if a.mesh == current[name].mesh and a != current[name]]
            candidate[name] = rng.choice(same) if same else rng.choice(options[name])
        else:
            candidate[name] = rng.choice(options[name])
        step += 1
        r = problem.evaluate(candidate)
        evaluated += 1
        if not r.feasible:
            continue
        delta = (r.iteration_time - current_time) / current_time
        if delta <= 0 or rng.random() < math.exp(-delta / temperature):
            current, current_time = candidate, r.iteration_time
            if r.iteration_time < best_result.iteration_time:
                best, best_result = dict(candidate), r
    return SearchResult(best, best_result, baselines, evaluated, time.time() - t0)
