"""The execution-plan simulator: how long an iteration of the dataflow graph
takes under an allocation of every MFC, and whether it fits in memory,
without running anything.

It replays what the master (real_ext/runtime/master.py) does, event by event.
An MFC is issued once its parents have finished: first the data transfers of
every MFC that became ready, then for each of them in topological order a
reallocation from its model's home layout (when its layout differs and no
live copy serves it; it builds the model in that layout first), its run,
and the free of the copy once no later MFC of the step uses it. Every operation occupies all of its workers, and every
worker executes its operations in issue order, so MFCs sharing a worker run
one after the other and MFCs on disjoint meshes run at once. A step ends with
a clear on every worker, which the master waits for before the next step
(``step_barrier=True``, the runtime's behaviour); without the barrier a
model's MFCs of step t+1 wait only for its train_step of step t (parameter
versions).

Durations come from the cost model (real_ext/plan/cost.py: mfc_time,
p2p_time); what reallocations and data transfers move comes from the real
reallocation planner and the runtime's data-transfer rule (realloc_cost.py).
With ``hardware.shared_cores`` (CPU workers sharing a machine's cores)
operations progress at 1 / hardware.contention(k) of their speed while k
workers are busy (as measured by the profile).

Memory per worker: the resident bytes of every model whose home includes it
(parameters, and the optimizer states of a trained model), the reallocated
copies alive on it, and the transient peak of the run in progress
(cost.peak_bytes). More than hardware.mem_bytes makes the plan infeasible;
the reason names the worker, the MFC and the bytes.
"""
from __future__ import annotations

import collections
import dataclasses

from real_ext.plan.cost import MFCWork, Strategy
from real_ext.plan.realloc_cost import Holdings, data_transfer, layout_key, realloc_time
from real_ext.runtime.dfg import DFG
from real_ext.runtime.master import home_allocations
from real_ext.runtime.spec import MFCSpec
from real_ext.runtime.timeline import draw_timeline

GiB = 1 << 30

# Bytes the runtime moves per key (interfaces.py): int64 token ids and float32
# log-probs / values per token; int64 prompt lengths and stop flags and float32
# rewards per sequence. ReMax's greedy keys are the same with a prefix.
TOKEN_KEY_BYTES = {"input_ids": 8, "behav_logp": 4, "ref_logp": 4, "values": 4}
SEQ_KEY_BYTES = {"prompt_len": 8, "stopped": 8, "reward": 4, "monitor_reward": 4}
OTHER_TOKEN_KEY_BYTES = 4


def key_bytes(key: str, seq_len: int) -> int:
    """Bytes of one sequence's ``key`` when the sequence is ``seq_len`` tokens."""
    base = key.removeprefix("greedy_")
    if base in SEQ_KEY_BYTES:
        return SEQ_KEY_BYTES[base]
    return TOKEN_KEY_BYTES.get(base, OTHER_TOKEN_KEY_BYTES) * seq_len


@dataclasses.dataclass
class SimResult:
    iteration_time: float                 # mean over the iterations after the first (the first if only one)
    iteration_times: list[float]          # each iteration's end minus the previous one's
    spans: list[tuple[int, str, str, float, float]]   # (worker, kind, name, start s, end s); kinds as the runtime's
    utilization: dict[int, float]         # worker -> busy fraction of the whole simulated time
    peak_memory: dict[int, int]           # worker -> bytes
    feasible: bool
    reason: str                           # why not feasible ("" when it is)

    def trace_events(self) -> list[dict]:
        """The spans as Chrome-trace events (microseconds), with a "clear"
        span on every worker at each iteration's end, as the runtime traces."""
        events = [{"name": name, "cat": kind, "ph": "X", "pid": 0, "tid": w, "ts": start * 1e6,
                   "dur": (end - start) * 1e6} for w, kind, name, start, end in self.spans]
        end = 0.0
        for t in self.iteration_times:
            end += t
            events += [{"name": "clear", "cat": "clear", "ph": "X", "pid": 0, "tid": w, "ts": end * 1e6, "dur": 0.0}
                       for w in sorted(self.utilization)]
        return events

    def draw(self, png_path: str, title: str | None = None) -> str:
        """The simulated timeline as the runtime's timeline PNG; returns its path."""
        title = title or f"simulated timeline: {self.iteration_time:.3g} s per iteration"
        return draw_timeline(self.trace_events(), png_path, title=title)


def simulate(mfcs: list[MFCSpec], models: dict, works: dict[str, MFCWork], allocations: dict, cost, *,
             n_iterations: int = 3, step_barrier: bool = True) -> SimResult:
    """Simulate ``n_iterations`` steps of the graph ``mfcs`` (their own
    allocations are ignored) with ``allocations`` (MFC name -> Allocation),
    ``models`` (model name -> ModelInfo) and ``works`` (MFC name -> MFCWork)
    on ``cost.hardware``."""
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    missing = [m.name for m in mfcs if m.name not in allocations]
    if missing:
        raise ValueError(f"no allocation for MFCs {missing}; given: {sorted(allocations)}")
    mfcs = [dataclasses.replace(m, allocation=allocations[m.name]) for m in mfcs]
    n_workers = cost.hardware.n_workers
    for m in mfcs:
        if m.name not in works:
            raise ValueError(f"no MFCWork for MFC {m.name!r}; given: {sorted(works)} (see works_for)")
        if m.model is not None and m.model not in models:
            raise ValueError(f"MFC {m.name!r} runs model {m.model!r}, which models lacks (given: {sorted(models)})")
        m.allocation.layout   # LayoutError unless dp * tp * pp is the mesh size
        outside = [w for w in m.allocation.mesh if not 0 <= w < n_workers]
        if outside:
            raise ValueError(f"MFC {m.name!r}: mesh names workers {outside}, outside the {n_workers} workers of "
                             f"{cost.hardware.name}")
    return _Simulation(mfcs, models, works, cost, n_iterations, step_barrier).run()


@dataclasses.dataclass(eq=False)
class _Op:
    id: int
    kind: str                    # run | transfer | realloc | free | clear
    name: str
    workers: tuple[int, ...]
    work: float                  # seconds at full speed
    iteration: int
    mfc: MFCSpec | None = None   # the MFC it serves
    memory: str = ""             # what its bytes are, e.g. "actor copy for actor_gen"
    hold: dict = dataclasses.field(default_factory=dict)   # worker -> bytes taken when it starts
    drop: dict = dataclasses.field(default_factory=dict)   # worker -> bytes given back when it ends
    remaining: float = 0.0
    start: float | None = None


class _Simulation:
    def __init__(self, mfcs, models, works, cost, n_iterations, step_barrier):
        self.dfg = DFG.build(mfcs)
        self.mfcs = self.dfg.mfcs
        self.parents = {m.name: self.dfg.parents(m) for m in self.mfcs}
        self.models, self.works, self.cost, self.hw = models, works, cost, cost.hardware
        self.n_iterations, self.step_barrier = n_iterations, step_barrier
        self.homes = home_allocations(models, self.mfcs)
        self.trainer = {m.model: m.name for m in self.mfcs if m.interface == "train_step"}
        # The master splits a step's samples (prompts with their responses) over dp ranks.
        self.n_samples = next((m.n_seqs for m in self.mfcs if m.n_seqs), None) or min(
            works[m.name].n_seqs for m in self.mfcs)
        self.queues = {w: collections.deque() for w in range(self.hw.n_workers)}
        self.running: list[_Op] = []
        self.now, self.next_id = 0.0, 0
        self.issued = [set() for _ in range(n_iterations)]
        self.done = [set() for _ in range(n_iterations)]
        self.holdings = [{} for _ in range(n_iterations)]   # key -> Holdings
        self.copies: dict[tuple, tuple] = {}                # (model, layout) -> (bytes per worker, label), while alive
        self.current = 0                                    # the step in progress (with the barrier)
        self.ends: dict[int, float] = {}                    # step -> when its last operation ended
        self.spans: list[tuple] = []
        self.realloc_s: dict[tuple, float] = {}             # (model, src, dst) -> seconds
        self._init_memory()

    # ------------------------------------------------------------ memory

    def _init_memory(self):
        self.resident = collections.defaultdict(list)     # worker -> [(model, bytes)]
        for name, home in self.homes.items():
            nbytes = self.cost.resident_bytes(self.models[name], Strategy(home.dp, home.tp, home.pp))
            for w in home.mesh:
                self.resident[w].append((name, nbytes))
        self.used = {w: sum(b for _, b in self.resident[w]) for w in self.queues}
        self.peak = dict(self.used)
        self.held = collections.defaultdict(dict)         # worker -> {what: bytes} beyond the resident
        self.reason = ""
        for w, used in self.used.items():
            if used > self.hw.mem_bytes:
                homed = ", ".join(f"{m} {b / GiB:.1f} GiB (home of {self.trainer.get(m) or self._first_mfc(m)})"
                                  for m, b in self.resident[w])
                self.reason = (f"worker {w}: the resident models need {used / GiB:.1f} GiB > "
                               f"{self.hw.mem_bytes / GiB:.1f} GiB ({homed})")
                break

    def _first_mfc(self, model: str) -> str:
        return next(m.name for m in self.mfcs if m.model == model)

    def _take(self, op: _Op):
        for w, nbytes in op.hold.items():
            self.used[w] += nbytes
            self.held[w][op.memory] = nbytes
            self.peak[w] = max(self.peak[w], self.used[w])
            if self.used[w] > self.hw.mem_bytes and not self.reason:
                parts = [f"resident {m} {b / GiB:.1f}" for m, b in self.resident[w]]
                parts += [f"{k} {b / GiB:.1f}" for k, b in self.held[w].items()]
                doing = f"running {op.mfc.name}" if op.kind == "run" else f"reallocating for {op.mfc.name}"
                self.reason = (f"worker {w} needs {self.used[w] / GiB:.1f} GiB while {doing} > "
                               f"{self.hw.mem_bytes / GiB:.1f} GiB ({', '.join(parts)} GiB)")

    def _give_back(self, op: _Op):
        for w, nbytes in op.drop.items():
            self.used[w] -= nbytes
            del self.held[w][op.memory]

    # ------------------------------------------------------------ the master

    def _add(self, kind, name, workers, seconds, iteration, mfc=None, memory="", hold=None, drop=None) -> _Op:
        seconds += self.hw.op_latency   # every operation is a message to its workers and a reply
        op = _Op(self.next_id, kind, name, tuple(sorted(workers)), seconds, iteration, mfc, memory, hold or {},
                 drop or {}, remaining=seconds)
        self.next_id += 1
        for w in op.workers:
            self.queues[w].append(op)
        return op

    def _open_steps(self) -> list[int]:
        if self.step_barrier:
            return [self.current] if self.current < self.n_iterations else []
        # Without the barrier, a step's MFCs are considered once the previous step is all issued.
        out = []
        for t in range(self.n_iterations):
            out.append(t)
            if len(self.issued[t]) < len(self.mfcs):
                break
        return out

    def _version_ready(self, m: MFCSpec, t: int) -> bool:
        train = self.trainer.get(m.model)
        return t == 0 or train is None or train in self.done[t - 1]

    def _issue_ready(self):
        ready = [(t, m) for t in self._open_steps() for m in self.mfcs
                 if m.name not in self.issued[t] and all(p in self.done[t] for p in self.parents[m.name])
                 and self._version_ready(m, t)]
        for t, m in ready:
            self._issue_transfer(t, m)
        for t, m in ready:
            self.issued[t].add(m.name)
            self._issue_run(t, m)

    def _sample_bytes(self, m: MFCSpec, key: str) -> int:
        work = self.works[m.name]
        return round(key_bytes(key, work.seq_len) * work.n_seqs / self.n_samples)

    def _issue_transfer(self, t: int, m: MFCSpec):
        keys = [k for k in m.inputs if k not in self.dfg.dataset_keys]
        if not keys:
            return
        held = tuple((self.holdings[t][k], self._sample_bytes(m, k)) for k in keys)
        workers, seconds, received = data_transfer(m.allocation, self.n_samples, held, self.cost)
        for k, (h, _) in zip(keys, held):
            self.holdings[t][k] = h.plus(received)
        if workers:
            self._add("transfer", f"{m.name}:data", workers, seconds, t, m)

    def _issue_run(self, t: int, m: MFCSpec):
        a = m.allocation
        strategy = Strategy(a.dp, a.tp, a.pp, a.n_microbatches)
        model = self.models[m.model] if m.model is not None else None
        home = self.homes.get(m.model)
        moved = model is not None and layout_key(home) != layout_key(a)
        copy = (m.model, layout_key(a))
        if moved and copy not in self.copies:
            nbytes = self.cost.resident_bytes(dataclasses.replace(model, trains=False), strategy)
            key = (m.model, layout_key(home), layout_key(a))
            if key not in self.realloc_s:
                self.realloc_s[key] = realloc_time(model, home, a, self.cost) + self.cost.build_time(model, strategy)
            memory = f"{m.model} copy for {m.name}"
            self._add("realloc", f"{m.model}:realloc", set(home.mesh) | set(a.mesh), self.realloc_s[key], t, m,
                      memory, hold={w: nbytes for w in a.mesh})
            self.copies[copy] = (nbytes, memory)
        work = self.works[m.name]
        transient = self.cost.peak_bytes(model, work, strategy)
        self._add("run", m.name, a.mesh, self.cost.mfc_time(model, work, strategy), t, m, f"{m.name} run peak",
                  hold={w: transient for w in a.mesh}, drop={w: transient for w in a.mesh})
        later = [x for x in self.mfcs if x.name not in self.issued[t]]
        if moved and not any((x.model, layout_key(x.allocation)) == copy for x in later):
            nbytes, memory = self.copies.pop(copy)
            self._add("free", f"{m.model}:free", a.mesh, 0.0, t, m, memory, drop={w: nbytes for w in a.mesh})

    def _finish_run(self, op: _Op):
        t, m = op.iteration, op.mfc
        self.done[t].add(m.name)
        for key in m.outputs:
            self.holdings[t][key] = Holdings.of(m.allocation, self.n_samples, m.interface == "inference")
        if len(self.done[t]) == len(self.mfcs):
            if self.step_barrier:
                self._add("clear", "clear", range(self.hw.n_workers), 0.0, t)
            else:
                self.ends[t] = self.now
        self._issue_ready()

    def _finish_clear(self, op: _Op):
        self.ends[op.iteration] = self.now
        self.current += 1
        self._issue_ready()

    # ------------------------------------------------------------ events

    def _start_ready(self):
        heads = {q[0] for q in self.queues.values() if q}
        for op in sorted(heads, key=lambda o: o.id):
            if op.start is None and all(self.queues[w][0] is op for w in op.workers):
                op.start = self.now
                self._take(op)
                self.running.append(op)

    def run(self) -> SimResult:
        self._issue_ready()
        while True:
            self._start_ready()
            if not self.running:
                break
            # Processor sharing: all running operations progress at one speed.
            speed = 1.0 / self.hw.contention(sum(len(op.workers) for op in self.running))
            dt = min(op.remaining for op in self.running) / speed
            self.now += dt
            for op in self.running:
                op.remaining -= dt * speed
            finished = sorted((op for op in self.running if op.remaining <= 1e-9 * op.work), key=lambda o: o.id)
            for op in finished:
                self._finish(op)
        stuck = [q[0].name for q in self.queues.values() if q]
        if stuck or len(self.ends) < self.n_iterations:
            raise RuntimeError(f"simulation stalled at {self.now:.3g} s (waiting: {stuck[:4]}); this is a bug")
        return self._result()

    def _finish(self, op: _Op):
        self.running.remove(op)
        for w in op.workers:
            self.queues[w].popleft()
        self._give_back(op)
        if op.kind == "clear":
            self._finish_clear(op)
            return
        self.spans += [(w, op.kind, op.name, op.start, self.now) for w in op.workers]
        if op.kind == "run":
            self._finish_run(op)

    def _result(self) -> SimResult:
        ends, last = [], 0.0
        for t in range(self.n_iterations):   # without the barrier a step may end before the one before it
            last = max(last, self.ends[t])
            ends.append(last)
        times = [b - a for a, b in zip([0.0] + ends[:-1], ends)]
        mean = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else times[0]
        busy = collections.Counter()
        for w, _, _, start, end in self.spans:
            busy[w] += end - start
        total = self.now or 1.0
        return SimResult(mean, times, self.spans, {w: busy[w] / total for w in self.queues},
                         {w: int(b) for w, b in self.peak.items()}, not self.reason, self.reason)


def works_for(algorithm_kind: str, n_prompts: int, prompt_len: int, gen_len: int, group_size: int = 1,
              n_minibatches: int = 1) -> dict[str, MFCWork]:
    """What every MFC of a ppo / grpo / remax / sft / rw / dpo graph computes
    per step, by MFC name: generation makes ``gen_len`` tokens after
    ``prompt_len`` for n_prompts x samples sequences; inference and training
    run over prompt_len + gen_len tokens (for sft / rw / dpo, gen_len is the
    answer's length; rw and dpo see a chosen and a rejected sequence per
    prompt)."""
    kind = algorithm_kind.lower()

    def work(interface, n_seqs):
        return MFCWork(interface, n_seqs, prompt_len, gen_len, n_minibatches if interface == "train_step" else 1)

    if kind in ("ppo", "grpo"):
        n = n_prompts * group_size
        out = {"actor_gen": work("generate", n), "reward_fn": work("reward_fn", n), "ref_inf": work("inference", n),
               "actor_train": work("train_step", n)}
        if kind == "ppo":
            out.update(reward_inf=work("inference", n), monitor_fn=work("reward_fn", n),
                       critic_inf=work("inference", n), critic_train=work("train_step", n))
        return out
    if kind == "remax":
        n = n_prompts
        return {"actor_gen": work("generate", n), "actor_greedy": work("generate", n),
                "reward_fn": work("reward_fn", n), "greedy_reward_fn": work("reward_fn", n),
                "ref_inf": work("inference", n), "actor_train": work("train_step", n)}
    if kind == "sft":
        return {"actor_train": work("train_step", n_prompts)}
    if kind == "rw":
        return {"rw_train": work("train_step", 2 * n_prompts)}
    if kind == "dpo":
        return {"ref_inf": work("inference", 2 * n_prompts), "actor_train": work("train_step", 2 * n_prompts)}
    raise ValueError(f"algorithm {algorithm_kind!r} unknown; expected one of ppo, grpo, remax, sft, rw, dpo")
