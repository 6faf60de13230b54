"""The master's side that SFT, reward modelling and DPO share: their samples
come from a CompletionDataset that workers read themselves (real_ext/data/
completions.py), so the master only picks sample ids and passes the
workers' statistics through."""
from __future__ import annotations

import dataclasses

from real_ext.algo.common import prompts_for_step
from real_ext.runtime.spec import AllocationError, MFCSpec


def check_config(config) -> None:
    """ValueError, naming the field, for the fields every supervised config has."""
    name = type(config).__name__
    if not isinstance(config.batch_size, int) or config.batch_size < 1:
        raise ValueError(f"{name}.batch_size must be an integer >= 1 (samples per step), got {config.batch_size!r}")
    if not isinstance(config.n_minibatches, int) or not 1 <= config.n_minibatches <= config.batch_size:
        raise ValueError(f"{name}.n_minibatches must be an integer in 1..batch_size ({config.batch_size}): every "
                         f"update needs a sample; got {config.n_minibatches!r}")
    if not isinstance(config.allocations, dict):
        raise ValueError(f"{name}.allocations must be a dict of MFC name -> Allocation, "
                         f"got {type(config.allocations).__name__}")


@dataclasses.dataclass
class SupervisedConfig:
    """The fields of SFT and reward modelling (subclassed so errors name the algorithm's config)."""
    batch_size: int                  # samples per step (prompts with their answers, or pairs)
    allocations: dict                # MFC name -> Allocation
    n_minibatches: int = 1           # optimizer updates per step
    shuffle_seed: int | None = None  # None: the dataset in order; else a fresh permutation every epoch

    def __post_init__(self):
        check_config(self)


class Supervised:
    """The master's side of an algorithm trained on given completions.
    Subclasses set the names below and define ``mfcs``."""
    name: str                        # in error messages
    train_mfc: str                   # whose statistics are the eval statistics
    eval_mfcs: tuple[str, ...]
    n_completions: int | None = None  # completions per sample the loss needs; None: any number

    def __init__(self, config):
        self.config = config

    def _allocations(self, names) -> dict:
        missing = sorted(set(names) - set(self.config.allocations))
        if missing:
            raise AllocationError(f"{self.name} needs allocations for MFCs {missing}; "
                                  f"given: {sorted(self.config.allocations)}")
        return self.config.allocations

    def _per_step(self, mfcs: list[MFCSpec]) -> list[MFCSpec]:
        for m in mfcs:  # a sample is a prompt with its completions: every call sees batch_size samples
            m.n_seqs = self.config.batch_size
        return mfcs

    def prompts_for_step(self, step: int, dataset) -> list[int]:
        have = getattr(dataset, "n_completions", None)
        if have is None or self.n_completions not in (None, have):
            want = f"{self.n_completions} completions per prompt" if self.n_completions else "completions"
            got = f"{have} per prompt" if have is not None else f"a {type(dataset).__name__}"
            raise ValueError(f"{self.name} trains on given {want} (a CompletionDataset, real_ext/data/"
                             f"completions.py); got {got}")
        return prompts_for_step(step, self.config.batch_size, dataset, self.config.shuffle_seed)

    def args_for(self, mfc, state, split) -> dict:
        return {}

    def finish_step(self, state) -> dict:
        return dict(state.stats)

    def eval_stats(self, state) -> dict:
        prefix = f"{self.train_mfc}/"
        return {k[len(prefix):]: v for k, v in state.stats.items() if k.startswith(prefix)}
