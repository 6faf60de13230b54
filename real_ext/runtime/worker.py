"""A model worker: one process per device. It holds the shards of every model
whose MFCs include it, executes the master's operations in the order it
receives them (runs, transfers, reallocations, frees, offloads), and replies
with metadata, statistics and trace spans. The same class runs under the local
launcher and as a Ray actor."""
from __future__ import annotations

import dataclasses
import os
import time
import traceback

import torch

from real_ext.data.sample import SequenceSample
from real_ext.model import ReaLModel
from real_ext.model.train import Trainer
from real_ext.parallel.context import ParallelContext
from real_ext.realloc import Layout, execute, offload, plan, reload
from real_ext.runtime import ops
from real_ext.runtime.interfaces import RunContext, run_interface
from real_ext.runtime.transfer import run_transfers, store_add


@dataclasses.dataclass
class Setup:
    """Everything a worker needs to start, sent once by the master."""
    models: dict                 # name -> ModelSpec
    mfcs: list                   # MFCSpec
    homes: dict                  # model name -> Allocation its parameters live under
    datasets: dict               # split ("train", "eval") -> dataset (real_ext/data/prompts.py, sequences.py)
    device: str = "cpu"


def layout_key(allocation) -> tuple:
    return (allocation.mesh, allocation.dp, allocation.tp, allocation.pp)


class Worker:
    def __init__(self, rank: int, world_size: int, setup: Setup):
        self.rank, self.world_size, self.setup = rank, world_size, setup
        self.device = torch.device(setup.device)
        self.store: dict[int, SequenceSample] = {}          # sample id -> its data held here
        self.models: dict[tuple, ReaLModel] = {}         # (model name, layout key) -> shard held here
        self.trainers: dict[str, Trainer] = {}
        self.offloaded: dict[tuple, torch.Tensor] = {}
        # Read once: configs are needed again for every reallocation.
        self.configs = {name: spec.model_config() for name, spec in setup.models.items()}
        self.contexts = self._create_contexts()
        self.plans: dict[tuple, object] = {}
        self.spans: list = []
        self._load_homes()

    # ------------------------------------------------------------ setup

    def _kv_replication(self, model: str, tp: int) -> int:
        heads = self.configs[model].num_kv_heads
        return tp // heads if tp > heads else 1

    def _create_contexts(self) -> dict[tuple, ParallelContext]:
        """Every layout's process groups, created by every worker in one order."""
        contexts = {}
        allocations = [(m.model, m.allocation) for m in self.setup.mfcs if m.model is not None]
        allocations += [(name, a) for name, a in self.setup.homes.items()]
        for model, allocation in allocations:
            key = (layout_key(allocation), self._kv_replication(model, allocation.tp))
            if key not in contexts:
                contexts[key] = ParallelContext.create(allocation.layout, key[1])
        return contexts

    def context(self, model: str, allocation) -> ParallelContext:
        return self.contexts[(layout_key(allocation), self._kv_replication(model, allocation.tp))]

    def _load_homes(self):
        for name, allocation in self.setup.homes.items():
            if self.rank not in allocation.mesh:
                continue
            spec = self.setup.models[name]
            ctx, dtype = self.context(name, allocation), getattr(torch, spec.dtype)
            if spec.path is not None:
                model = ReaLModel.from_pretrained(spec.path, head=spec.head, layout=ctx, dtype=dtype,
                                                  device=self.device)
            else:
                model = ReaLModel.from_config(self.configs[name], head=spec.head, layout=ctx, dtype=dtype,
                                              device=self.device, seed=spec.seed)
            if spec.tokenizer is not None:
                model.source_path = spec.tokenizer   # save_pretrained copies the tokenizer files from here
            model.activation_checkpointing = spec.activation_checkpointing
            self.models[(name, layout_key(allocation))] = model
            if spec.optimizer is not None:
                self.trainers[name] = Trainer(model, spec.optimizer)

    # ------------------------------------------------------------ operations

    def handle(self, op: ops.Op) -> ops.Reply:
        start = time.time()
        try:
            result = getattr(self, f"_{op.kind}")(op)
            reply = ops.Reply(op.id, self.rank, True, result or {})
        except Exception:  # noqa: BLE001 (the master reports it with the traceback)
            reply = ops.Reply(op.id, self.rank, False, error=traceback.format_exc())
        reply.spans = [(op.kind, op.name, start, time.time())]
        return reply

    def _run(self, op):
        mfc = next(m for m in self.setup.mfcs if m.name == op.payload["mfc"])
        model = self.models.get((mfc.model, layout_key(mfc.allocation))) if mfc.model else None
        trainer = self.trainers.get(mfc.model) if mfc.interface == "train_step" else None
        ctx = RunContext(worker=self, mfc=mfc, model=model, trainer=trainer,
                         sample_ids=op.payload["samples"][self.rank], args=op.payload.get("args", {}))
        result = run_interface(ctx)
        if result.outputs is not None:
            store_add(self.store, result.outputs)
        # One rank per data-parallel replica reports its share of summed statistics.
        coord = model.ctx.coord if model is not None else None
        head = coord is None or (coord.tp == 0 and coord.pp == (model.ctx.pp - 1 if mfc.interface == "inference"
                                                                    else 0))
        held = [] if result.outputs is None else sorted(result.outputs.ids)
        return {"stats": result.stats, "meta": result.meta, "held": held,
                "summed": result.summed if head else {}}

    def _transfer(self, op):
        return {"bytes": run_transfers(self.rank, op.payload["pairs"], self.store, self.device)}

    def _realloc(self, op):
        name, src, dst = op.payload["model"], op.payload["src"], op.payload["dst"]
        spec = self.setup.models[name]
        dtype = getattr(torch, spec.dtype)
        config = self.configs[name]
        key = (name, layout_key(src), layout_key(dst))
        if key not in self.plans:
            layouts = [Layout.from_config(config, list(a.mesh), a.dp, a.tp, a.pp, head=spec.head, dtype=dtype)
                       for a in (src, dst)]
            self.plans[key] = plan(*layouts)
        src_model = self.models.get((name, layout_key(src)))
        dst_model = None
        if self.rank in dst.mesh:
            dst_model = self.models.get((name, layout_key(dst)))
            if dst_model is None:
                dst_model = ReaLModel(config, head=spec.head, layout=self.context(name, dst), dtype=dtype,
                                      device=self.device)
                self.models[(name, layout_key(dst))] = dst_model
        staged = execute(self.plans[key], None if src_model is None else src_model.flat,
                         None if dst_model is None else dst_model.flat, eta=op.payload.get("eta", 1.0))
        return {"staged_bytes": staged}

    def _free(self, op):
        self.models.pop((op.payload["model"], layout_key(op.payload["allocation"])), None)

    def _offload(self, op):
        key = (op.payload["model"], layout_key(op.payload["allocation"]))
        if key in self.models and key not in self.offloaded:
            self.offloaded[key] = offload(self.models[key].release_storage())

    def _reload(self, op):
        key = (op.payload["model"], layout_key(op.payload["allocation"]))
        if key in self.offloaded:
            self.models[key].adopt_storage(reload(self.offloaded.pop(key), self.device))

    def _clear(self, op):
        for sid in op.payload.get("samples", list(self.store)):
            self.store.pop(sid, None)

    def _save(self, op):
        name, allocation = op.payload["model"], self.setup.homes[op.payload["model"]]
        self.models[(name, layout_key(allocation))].save_pretrained(op.payload["path"])

    def _state_file(self, op) -> str:
        return os.path.join(op.payload["dir"], "train_state", op.payload["model"], f"rank{self.rank}.pt")

    def _save_state(self, op):
        """A trained model's checkpoint: HF parameters (the mesh's first rank
        writes) and every rank's optimizer state and RNG."""
        name = op.payload["model"]
        self._save(dataclasses.replace(op, payload={"model": name,
                                                    "path": os.path.join(op.payload["dir"], "models", name)}))
        path = self._state_file(op)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"layout": layout_key(self.setup.homes[name]), "trainer": self.trainers[name].state_dict(),
                    "rng": torch.get_rng_state()}, path)

    def _load_state(self, op):
        name, path = op.payload["model"], self._state_file(op)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {op.payload['dir']} has no optimizer state for model {name!r} "
                                    f"on worker {self.rank} ({path}); it was saved with another allocation")
        state = torch.load(path, weights_only=False)
        if state["layout"] != layout_key(self.setup.homes[name]):
            raise ValueError(f"model {name!r} was checkpointed under layout (mesh, dp, tp, pp)={state['layout']} "
                             f"but now lives under {layout_key(self.setup.homes[name])}; resume with the "
                             f"allocation of its train_step unchanged")
        self.trainers[name].load_state_dict(state["trainer"])
        torch.set_rng_state(state["rng"])


def worker_loop(worker: Worker, recv, send) -> None:
    """Execute operations until a shutdown arrives; replies go back in order."""
    while True:
        op = recv()
        if op.kind == ops.SHUTDOWN:
            send(ops.Reply(op.id, worker.rank, True))
            return
        send(worker.handle(op))
