"""The experiment config: every field a run reads, with its default. Loaded
from YAML by real_ext/experiments/config.py; examples/*.yaml show each kind.

Values are checked here field by field (ValueError naming the field);
checks across fields (models an experiment needs, files, allocations) are in
real_ext/experiments/check.py. Both run before any worker starts.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from real_ext.model.train import OptimConfig
from real_ext.runtime.spec import Allocation

EXPERIMENTS = ("ppo", "grpo", "remax", "sft", "rw", "dpo")


def _positive(obj, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(obj, name)}")


@dataclasses.dataclass
class InitSection:
    """A freshly initialised model sized for a built-in task (its vocabulary and tokenizer)."""
    task: str = "sort"
    size: Literal["tiny", "small"] = "tiny"
    seed: int = 0


@dataclasses.dataclass
class ModelSection:
    path: str | None = None                  # a Hugging Face checkpoint folder, or
    init: InitSection | None = None          # a fresh model for a built-in task
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    optimizer: OptimConfig | None = None     # for models that train
    activation_checkpointing: bool = False   # training recomputes each block's activations: less memory


@dataclasses.dataclass
class DataSection:
    task: str | None = None                  # a built-in task (real_ext.tasks), or
    path: str | None = None                  # a JSONL file / HF datasets folder on disk
    eval_path: str | None = None
    task_options: dict[str, int] = dataclasses.field(default_factory=dict)   # e.g. {max_len: 5}
    n: int = 1024                            # built-in task: training examples
    eval_n: int = 0                          # built-in task: eval examples
    seed: int = 0                            # built-in task data, and the shuffle order
    shuffle: bool = True                     # a seeded new order every epoch
    tokenizer: str | None = None             # default: the trained model's checkpoint
    max_len: int = 1024                      # prompt tokens (RL) or prompt + answer tokens (SFT, RW, DPO)
    on_long: Literal["truncate", "drop"] = "truncate"
    on_bad_line: Literal["error", "skip"] = "error"

    def __post_init__(self):
        _positive(self, "n", "max_len")
        if self.eval_n < 0:
            raise ValueError(f"eval_n must be >= 0, got {self.eval_n}")


@dataclasses.dataclass
class GenerationSection:
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_at_eos: bool = True                 # stop at the tokenizer's eos
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0
    cuda_graphs: bool = True                 # on CUDA: decode steps replayed from CUDA graphs


@dataclasses.dataclass
class PPOSection:
    batch_size: int = 32
    reward: str = "model"                    # "model": the reward model; or "task" / "task:<name>" / "fn:<module>.<fn>"
    kl_coef: float = 0.05
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    eps_clip: float = 0.2
    value_eps_clip: float = 0.2
    n_minibatches: int = 1
    adv_norm: bool = True
    bootstrap_truncated: bool = False
    missing_eos_penalty: float = 0.0         # subtracted from the reward of a response that hit max_new_tokens
    monitor_reward: str | None = None        # a rule scored for watching only, e.g. "task" with a reward model

    def __post_init__(self):
        _positive(self, "batch_size", "n_minibatches")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")


@dataclasses.dataclass
class GRPOSection:
    batch_size: int = 16
    group_size: int = 4
    reward: str = "task"
    beta: float = 0.0
    eps_clip: float = 0.2
    n_minibatches: int = 1
    std_eps: float = 1e-4

    def __post_init__(self):
        _positive(self, "batch_size", "group_size", "n_minibatches")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@dataclasses.dataclass
class ReMaxSection:
    batch_size: int = 16
    reward: str = "task"
    beta: float = 0.0
    eps_clip: float = 0.2
    n_minibatches: int = 1

    def __post_init__(self):
        _positive(self, "batch_size", "n_minibatches")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@dataclasses.dataclass
class SupervisedSection:                     # SFT and reward modelling
    batch_size: int = 32
    n_minibatches: int = 1

    def __post_init__(self):
        _positive(self, "batch_size", "n_minibatches")


@dataclasses.dataclass
class DPOSection:
    batch_size: int = 32
    beta: float = 0.1
    n_minibatches: int = 1

    def __post_init__(self):
        _positive(self, "batch_size", "n_minibatches")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


@dataclasses.dataclass
class CheckpointSection:
    every: int = 0                           # steps between checkpoints; 0: only at the end
    keep: int = 2                            # most recent checkpoints kept

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"every must be >= 0, got {self.every}")
        _positive(self, "keep")


@dataclasses.dataclass
class EvalSection:
    every: int = 0                           # steps between evaluations; 0: only at the end (with eval data)

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"every must be >= 0, got {self.every}")


@dataclasses.dataclass
class LogSection:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str | None = None
    console_keys: tuple[str, ...] = ()       # stats on the progress line; default per experiment
    timeline: bool = True


@dataclasses.dataclass
class PlanSection:
    """For ``allocations: auto``: the execution-plan search (real_ext/plan)."""
    profile: str = "runs/profile.json"       # CPU workers: `real-ext profile` output (made when missing)
    cluster: str | None = None               # GPUs: e.g. "1x8xH100"; default: this machine's GPUs
    time_s: float = 20.0                     # search time budget

    def __post_init__(self):
        if not self.time_s > 0:
            raise ValueError(f"time_s must be > 0, got {self.time_s}")


@dataclasses.dataclass
class ExperimentConfig:
    experiment: Literal["ppo", "grpo", "remax", "sft", "rw", "dpo"]
    out: str = "runs/experiment"
    steps: int = 100
    n_workers: int = 1
    device: Literal["cpu", "cuda"] = "cpu"
    threads_per_worker: int = 1
    launcher: Literal["local", "ray"] = "local"   # ray: workers as Ray actors (pip install "real_ext[ray]")
    ray_address: str | None = None           # launcher ray: "auto", "HOST:PORT"; default: a new local Ray instance
    actor: ModelSection | None = None
    critic: ModelSection | None = None
    ref: ModelSection | None = None
    reward: ModelSection | None = None
    data: DataSection = dataclasses.field(default_factory=DataSection)
    generation: GenerationSection = dataclasses.field(default_factory=GenerationSection)
    ppo: PPOSection | None = None
    grpo: GRPOSection | None = None
    remax: ReMaxSection | None = None
    sft: SupervisedSection | None = None
    rw: SupervisedSection | None = None
    dpo: DPOSection | None = None
    # MFC name -> where it runs; "auto": the plan search picks (section plan)
    allocations: dict[str, Allocation] | Literal["auto"] = dataclasses.field(default_factory=dict)
    plan: PlanSection = dataclasses.field(default_factory=PlanSection)
    offload: tuple[str, ...] = ()            # inference-only models kept in host memory between calls
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    log: LogSection = dataclasses.field(default_factory=LogSection)

    def __post_init__(self):
        _positive(self, "steps", "n_workers", "threads_per_worker")

    @property
    def algo(self):
        """The section of this experiment's algorithm (ppo, grpo, ...)."""
        return getattr(self, self.experiment)


@dataclasses.dataclass
class PipelineConfig:
    """Experiments run one after another in ``out/<stage>``; a string
    ``${stage}`` in a later stage is that stage's run folder (e.g.
    ``${sft}/models/actor``)."""
    out: str = "runs/pipeline"
    stages: dict[str, dict] = dataclasses.field(default_factory=dict)
