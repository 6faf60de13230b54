"""What an experiment runs: models, model function calls (MFCs) and their
allocations. Plain dataclasses, validated before any worker starts."""
from __future__ import annotations

import dataclasses
from typing import Any

from real_ext.model.config import ModelConfig
from real_ext.model.shards import check_tp
from real_ext.parallel.layout import LayoutError, ParallelLayout

INTERFACES = ("generate", "inference", "train_step", "reward_fn")


class AllocationError(ValueError):
    """An allocation that cannot run, named by its MFC."""


@dataclasses.dataclass(frozen=True)
class Allocation:
    mesh: tuple[int, ...]
    dp: int = 1
    tp: int = 1
    pp: int = 1
    n_microbatches: int = 1

    def __post_init__(self):
        object.__setattr__(self, "mesh", tuple(int(r) for r in self.mesh))

    @property
    def layout(self) -> ParallelLayout:
        return ParallelLayout(self.mesh, self.dp, self.tp, self.pp)


@dataclasses.dataclass
class ModelSpec:
    name: str
    path: str | None = None             # a Hugging Face checkpoint folder
    config: dict | None = None          # or a fresh model from a HF config.json dict
    head: str = "lm"
    dtype: str = "float32"
    seed: int = 0                       # initialisation seed of a fresh model (and of a new value head)
    optimizer: Any = None               # real_ext.model.train.OptimConfig when the model trains
    tokenizer: str | None = None        # folder whose tokenizer files HF saves carry (default: path)
    activation_checkpointing: bool = False   # recompute block activations in training's backward

    def model_config(self) -> ModelConfig:
        if (self.path is None) == (self.config is None):
            raise AllocationError(f"model {self.name!r}: give either a checkpoint path or a config")
        try:
            if self.path is not None:
                return ModelConfig.from_pretrained(self.path)
            return ModelConfig.from_hf_dict(self.config)
        except (OSError, ValueError, KeyError) as e:
            raise AllocationError(f"model {self.name!r}: {e}") from None


@dataclasses.dataclass
class MFCSpec:
    name: str
    model: str | None                   # None: no model (a reward function)
    interface: str                      # generate | inference | train_step | reward_fn
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    allocation: Allocation
    args: dict = dataclasses.field(default_factory=dict)
    n_seqs: int | None = None           # sequences per call (prompts for generate); checked against dp
    # Keys the master must have (as metadata, e.g. rewards for advantages) before
    # this MFC runs, but which its workers do not need: a dependency, no transfer.
    meta_inputs: tuple[str, ...] = ()

    @property
    def min_per_rank(self) -> int:
        """Sequences every data-parallel rank needs: one per mini-batch update."""
        return self.args.get("n_minibatches", 1) if self.interface == "train_step" else 1


def validate(models: dict[str, ModelSpec], mfcs: list[MFCSpec], n_workers: int) -> None:
    """Raise AllocationError naming the MFC for anything that cannot run."""
    names = set()
    for m in mfcs:
        if m.name in names:
            raise AllocationError(f"two MFCs are named {m.name!r}")
        names.add(m.name)
        where = f"MFC {m.name!r}"
        if m.interface not in INTERFACES:
            raise AllocationError(f"{where}: interface {m.interface!r} unknown; expected one of {INTERFACES}")
        a = m.allocation
        try:
            layout = a.layout
        except LayoutError as e:
            raise AllocationError(f"{where}: {e}") from None
        outside = [r for r in a.mesh if r >= n_workers]
        if outside:
            raise AllocationError(f"{where}: mesh {list(a.mesh)} names workers {outside} but the experiment has "
                                  f"{n_workers} workers (0..{n_workers - 1})")
        if a.n_microbatches < 1:
            raise AllocationError(f"{where}: n_microbatches must be >= 1")
        if m.n_seqs is not None and m.n_seqs % layout.dp:
            raise AllocationError(f"{where}: its batch of {m.n_seqs} sequences is not divisible by dp={layout.dp}; "
                                  f"make the batch a multiple of {layout.dp} or change dp")
        if m.interface == "reward_fn":
            if m.model is not None:
                raise AllocationError(f"{where}: a reward_fn MFC runs no model; set model to None")
            from real_ext.runtime.rewards import resolve_reward
            resolve_reward(m.args.get("reward", ""))
            continue
        if m.model not in models:
            raise AllocationError(f"{where}: model {m.model!r} is not defined (defined: {sorted(models)})")
        config = models[m.model].model_config()
        try:
            check_tp(config, layout.tp)
        except LayoutError as e:
            raise AllocationError(f"{where}: {e}") from None
        if layout.pp > config.num_layers:
            raise AllocationError(f"{where}: pp={layout.pp} exceeds the {config.num_layers} layers of model "
                                  f"{m.model!r}")
        if m.interface == "train_step" and models[m.model].optimizer is None:
            raise AllocationError(f"{where}: model {m.model!r} trains but has no optimizer config")
        if m.n_seqs is not None and m.n_seqs // layout.dp < m.min_per_rank:
            raise AllocationError(f"{where}: {m.n_seqs // layout.dp} sequences per data-parallel rank cannot make "
                                  f"{m.min_per_rank} mini-batches; raise the batch or lower n_minibatches")
    trained = [m.model for m in mfcs if m.interface == "train_step"]
    for model in set(trained):
        if trained.count(model) > 1:
            raise AllocationError(f"model {model!r} has more than one train_step MFC")


def validate_offload(models: dict[str, ModelSpec], mfcs: list[MFCSpec], offload) -> None:
    used = {m.model for m in mfcs if m.model is not None}
    for name in offload:
        if name not in used:
            raise AllocationError(f"offload names model {name!r}, which no MFC uses (used: {sorted(used)})")
        if models[name].optimizer is not None:
            raise AllocationError(f"offload names model {name!r}, which trains; only inference-only models "
                                  f"(reference, reward) are offloaded")
