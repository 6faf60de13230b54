"""The master: drives the dataflow graph over the model workers, holding only
metadata (sample ids, lengths, rewards, which worker holds which data).

One training step: prompts are picked; MFCs are issued in a topological order,
each as [data transfer in] -> [parameter reallocation in] -> run -> [free the
reallocated copy]; an MFC is issued once its parents have replied (their
metadata decides the token-balanced split and who sends what). Operations are
numbered and every worker executes its own in that order, so MFCs on disjoint
meshes run concurrently while collectives never deadlock. A model's first call
of step t+1 comes after its train_step of step t in that order, which enforces
parameter versions.
"""
from __future__ import annotations

import dataclasses
import time

from real_ext.data.packed import balanced_cuts
from real_ext.runtime import ops
from real_ext.runtime.dfg import DFG
from real_ext.runtime.launcher import LocalLauncher, WorkerFailure
from real_ext.runtime.spec import MFCSpec, validate, validate_offload
from real_ext.runtime.trace import Trace
from real_ext.runtime.transfer import plan_transfers
from real_ext.runtime.worker import Setup, layout_key

REPLY_TIMEOUT = 3600.0  # seconds without any reply before the run is declared hung


def home_allocations(models, mfcs: list[MFCSpec]) -> dict:
    """Where each model's parameters live: its train_step's allocation, else its first MFC's."""
    homes = {}
    for m in mfcs:
        if m.model is not None and m.interface == "train_step":
            homes[m.model] = m.allocation
    for m in mfcs:
        if m.model is not None:
            homes.setdefault(m.model, m.allocation)
    return homes


@dataclasses.dataclass
class StepState:
    meta: dict                    # sample id -> metadata from the MFCs that produced it
    holders: dict                 # (sample id, key) -> workers holding it
    stats: dict                   # "mfc/stat" -> value


class Master:
    def __init__(self, models: dict, algorithm, dataset, n_workers: int, *, device: str = "cpu",
                 threads_per_worker: int = 1, offload: tuple[str, ...] = (), launcher=None,
                 trace: Trace | None = None, eval_dataset=None):
        """``offload`` names models (inference-only) whose parameters wait in host
        memory between their calls (reloaded before each, offloaded after).
        ``eval_dataset`` is what ``evaluate`` runs the algorithm's eval MFCs on.
        ``launcher`` starts the workers: ``launcher(n_workers, setup,
        threads_per_worker=...)``, LocalLauncher by default (RayLauncher in
        real_ext/runtime/ray_launcher.py, e.g. through functools.partial)."""
        self.models, self.algorithm, self.dataset = models, algorithm, dataset
        self.datasets = {"train": dataset} if eval_dataset is None else {"train": dataset, "eval": eval_dataset}
        self.mfcs = algorithm.mfcs()
        validate(models, self.mfcs, n_workers)
        validate_offload(models, self.mfcs, offload)
        self.offload = tuple(offload)
        self.dfg = DFG.build(self.mfcs)
        self.homes = home_allocations(models, self.mfcs)
        self.n_workers = n_workers
        self.trace = trace or Trace()
        self.setup = Setup(models, self.mfcs, self.homes, self.datasets, device)
        self.launcher = (launcher or LocalLauncher)(n_workers, self.setup, threads_per_worker=threads_per_worker)
        self.next_id = 0
        self.pending: dict[int, set[int]] = {}
        self.replies: dict[int, dict[int, ops.Reply]] = {}
        self.op_names: dict[int, str] = {}
        self.step_count = 0
        self.copies: set[tuple] = set()      # (model, layout) reallocated copies alive on workers
        self.reloaded: set[str] = set()      # offloaded models currently back on their devices
        for name in self.offload:
            self._issue_model_op(ops.OFFLOAD, name)

    # ------------------------------------------------------------ plumbing

    def issue(self, kind: str, name: str, participants, payload=None) -> int:
        op = ops.Op(self.next_id, kind, name, tuple(sorted(set(participants))), payload or {})
        self.next_id += 1
        self.pending[op.id] = set(op.participants)
        self.replies[op.id] = {}
        self.op_names[op.id] = name
        for rank in op.participants:
            self.launcher.send(rank, op)
        return op.id

    def wait(self, op_ids) -> dict[int, dict[int, ops.Reply]]:
        """Replies of all the given operations (collecting any others that arrive)."""
        op_ids = list(op_ids)
        while any(self.pending.get(i) for i in op_ids):
            self._receive_one(op_ids)
        return {i: self.replies.pop(i) for i in op_ids}

    def wait_any(self, op_ids) -> tuple[int, dict[int, ops.Reply]]:
        """(id, replies) of the first of the given operations to finish."""
        while True:
            for i in op_ids:
                if not self.pending[i]:
                    return i, self.replies.pop(i)
            self._receive_one(op_ids)

    def _receive_one(self, op_ids) -> None:
        try:
            got = self.launcher.receive(timeout=REPLY_TIMEOUT)
        except WorkerFailure as e:
            # A worker died: name what it was doing (its oldest unanswered operation).
            doing = [self.op_names[i] for i in sorted(self.pending) if e.rank in self.pending[i]]
            where = f" while executing {doing[0]!r}" if doing else ""
            raise WorkerFailure(f"{e}{where}", rank=e.rank) from None
        if got is None:
            raise WorkerFailure(f"no reply from any worker for {REPLY_TIMEOUT:.0f} s; waiting on "
                                + ", ".join(f"{self.op_names[i]} (workers {sorted(self.pending[i])})"
                                            for i in op_ids if self.pending.get(i)))
        rank, reply = got
        self.trace.add(rank, reply.spans)
        if not reply.ok:
            raise WorkerFailure(f"worker {rank} failed in {self.op_names[reply.op_id]!r}:\n{reply.error}",
                                rank=rank)
        self.replies[reply.op_id][rank] = reply
        self.pending[reply.op_id].discard(rank)

    def _forget_finished(self) -> None:
        for i in [i for i, left in self.pending.items() if not left]:
            del self.pending[i], self.op_names[i]
            self.replies.pop(i, None)

    def close(self) -> None:
        self.launcher.close()

    def __enter__(self) -> "Master":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ one step

    def _split(self, mfc: MFCSpec, samples: list[int], state: StepState, dataset,
               evaluating: bool) -> dict[int, list[int]]:
        """Samples per worker: a token-balanced contiguous split over the dp ranks
        (each with at least one sequence per mini-batch); every worker of a dp
        rank gets that rank's samples. A generation's work per prompt is its
        samples grown to at most max_new_tokens (new tokens dominate, so this is
        nearly an even count); other MFCs' is the tokens earlier MFCs reported,
        else the dataset's."""
        layout = mfc.allocation.layout
        if mfc.interface == "generate":
            gen = mfc.args["generation"]
            lengths = [(sum(dataset.lengths(s)) + gen["max_new_tokens"]) * gen.get("n_samples", 1) for s in samples]
        else:
            lengths = [sum(state.meta.get(s, {}).get("lengths") or dataset.lengths(s)) for s in samples]
        cuts = balanced_cuts(lengths, layout.dp, 1 if evaluating else mfc.min_per_rank)
        per_dp = [samples[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        return {rank: per_dp[layout.coord(rank).dp] for rank in layout.mesh}

    def _issue_transfer(self, mfc: MFCSpec, split: dict[int, list[int]], state: StepState) -> None:
        keys = [k for k in mfc.inputs if k not in self.dfg.dataset_keys]
        pairs = plan_transfers(split, keys, state.holders) if keys else []
        if not pairs:
            return
        participants = {p[0] for p in pairs} | {p[1] for p in pairs}
        self.issue(ops.TRANSFER, f"{mfc.name}:data", participants, {"pairs": pairs})
        for src, dst, sids, ks in pairs:
            for sid in sids:
                for k in ks:
                    state.holders.setdefault((sid, k), set()).add(dst)

    def _issue_model_op(self, kind: str, model: str) -> int:
        home = self.homes[model]
        return self.issue(kind, f"{model}:{kind}", home.mesh, {"model": model, "allocation": home})

    def _issue_run(self, mfc: MFCSpec, split: dict[int, list[int]], state: StepState, later: list[MFCSpec],
                   extra: dict) -> int:
        """[reload] -> [reallocation in] -> run -> [free the reallocated copy] ->
        [offload]; returns the run's id. A reallocated copy (a reloaded model)
        stays while MFCs issued ``later`` in this step still use it, so that
        e.g. ReMax's sampled and greedy generation share one reallocation."""
        model = mfc.model
        home = self.homes.get(model)
        moved = model is not None and layout_key(home) != layout_key(mfc.allocation)
        copy = (model, layout_key(mfc.allocation))
        if model in self.offload and model not in self.reloaded:
            self._issue_model_op(ops.RELOAD, model)
            self.reloaded.add(model)
        if moved and copy not in self.copies:
            self.issue(ops.REALLOC, f"{model}:realloc", set(home.mesh) | set(mfc.allocation.mesh),
                       {"model": model, "src": home, "dst": mfc.allocation})
            self.copies.add(copy)
        args = {**self.algorithm.args_for(mfc, state, split), "step": self.step_count, **extra}
        run = self.issue(ops.RUN, mfc.name, mfc.allocation.mesh, {"mfc": mfc.name, "samples": split, "args": args})
        if moved and not any((m.model, layout_key(m.allocation)) == copy for m in later):
            self.issue(ops.FREE, f"{model}:free", mfc.allocation.mesh, {"model": model, "allocation": mfc.allocation})
            self.copies.discard(copy)
        if model in self.offload and not any(m.model == model for m in later):
            self._issue_model_op(ops.OFFLOAD, model)
            self.reloaded.discard(model)
        return run

    def _collect(self, mfc: MFCSpec, replies: dict[int, ops.Reply], state: StepState) -> None:
        for rank, reply in replies.items():
            for sid, m in reply.result["meta"].items():
                state.meta.setdefault(sid, {}).update(m)
            for sid in reply.result["held"]:
                for key in mfc.outputs:
                    state.holders.setdefault((sid, key), set()).add(rank)
            for k, v in reply.result["stats"].items():
                state.stats[f"{mfc.name}/{k}"] = v  # global stats are equal on every rank
            for k, v in reply.result["summed"].items():
                state.stats[f"{mfc.name}/{k}"] = state.stats.get(f"{mfc.name}/{k}", 0) + v

    def _run_graph(self, mfcs: list[MFCSpec], samples: list[int], split_name: str, extra: dict) -> StepState:
        """Run ``mfcs`` (a closed part of the graph, in topological order) once
        over ``samples`` of the dataset ``split_name``.

        Every MFC is issued as soon as all its parents have replied (their
        metadata decides its token-balanced split and who sends it what). MFCs
        that become ready together have all their data transfers issued before
        any of their runs, so that a worker busy with one run never holds up
        the data another MFC on other workers needs."""
        dataset = self.datasets[split_name]
        evaluating = split_name != "train"
        state = StepState(meta={}, holders={}, stats={})
        names = {m.name for m in mfcs}
        runs: dict[int, MFCSpec] = {}    # run op id -> its MFC, while running
        done: set[str] = set()
        issued: set[str] = set()
        while len(done) < len(mfcs):
            ready = [m for m in mfcs
                     if m.name not in issued and all(p in done for p in self.dfg.parents(m) if p in names)]
            splits = {}
            for mfc in ready:
                splits[mfc.name] = self._split(mfc, samples, state, dataset, evaluating)
                self._issue_transfer(mfc, splits[mfc.name], state)
            for mfc in ready:
                issued.add(mfc.name)
                later = [m for m in mfcs if m.name not in issued]
                runs[self._issue_run(mfc, splits[mfc.name], state, later, dict(extra, split=split_name))] = mfc
            op_id, replies = self.wait_any(list(runs))
            mfc = runs.pop(op_id)
            self._collect(mfc, replies, state)
            done.add(mfc.name)
        # Every worker answers in order, so once all have cleared, every reply is in.
        self.wait([self.issue(ops.CLEAR, "clear", range(self.n_workers))])
        self._forget_finished()
        return state

    def step(self) -> dict:
        """One iteration of the dataflow graph; returns its statistics."""
        t0 = time.time()
        samples = self.algorithm.prompts_for_step(self.step_count, self.dataset)  # a prompt with its responses
        state = self._run_graph(self.dfg.mfcs, samples, "train", {})
        stats = self.algorithm.finish_step(state)
        stats.update(step=self.step_count, time_s=time.time() - t0)
        self.step_count += 1
        return stats

    def evaluate(self) -> dict:
        """The algorithm's eval MFCs (no parameter updates) over the whole eval
        dataset, in batches of the training batch size; returns the statistics
        averaged over batches (weighted by samples), each named "eval/...".
        A last batch smaller than the largest dp of those MFCs is left out."""
        if "eval" not in self.datasets:
            raise ValueError("evaluate needs an eval_dataset; pass one to Master")
        mfcs = [m for m in self.dfg.mfcs if m.name in self.algorithm.eval_mfcs]
        size = max(m.n_seqs or 1 for m in mfcs)
        smallest = max(m.allocation.dp for m in mfcs)
        n = len(self.datasets["eval"])
        totals: dict[str, float] = {}
        counted = 0
        for b, start in enumerate(range(0, n, size)):
            ids = list(range(start, min(n, start + size)))
            if len(ids) < smallest:
                break
            # Generation seeds by batch, not by training step: every evaluation samples alike.
            state = self._run_graph(mfcs, ids, "eval", {"eval": True, "step": -1 - b})
            for k, v in self.algorithm.eval_stats(state).items():
                totals[k] = totals.get(k, 0.0) + v * len(ids)
            counted += len(ids)
        if not counted:
            raise ValueError(f"the eval dataset has {n} samples, fewer than the dp={smallest} of the eval MFCs")
        return {f"eval/{k}": v / counted for k, v in totals.items()}

    def save_states(self, models, directory: str) -> None:
        """Checkpoint the trained ``models`` into ``directory`` (HF parameters,
        optimizer states, RNG; see worker._save_state), all at once."""
        self.wait([self.issue(ops.SAVE_STATE, f"{m}:checkpoint", self.homes[m].mesh, {"model": m, "dir": directory})
                   for m in models])

    def load_states(self, models, directory: str) -> None:
        """Restore the optimizer states and RNG ``save_states`` wrote; the
        parameters come from ``directory/models`` through the model specs."""
        self.wait([self.issue(ops.LOAD_STATE, f"{m}:restore", self.homes[m].mesh, {"model": m, "dir": directory})
                   for m in models])

    def save(self, model: str, path: str) -> None:
        self.wait([self.issue(ops.SAVE, f"{model}:save", self.homes[model].mesh, {"model": model, "path": path})])
