"""What to generate: GenerationConfig, and what comes back: GenerationOutput."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int
    min_new_tokens: int = 0
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0                         # 0: off
    top_p: float = 1.0                     # 1: off
    stop_token_ids: tuple[int, ...] = ()
    n_samples: int = 1                     # samples per prompt (GRPO groups)
    seed: int | None = None
    cuda_graphs: bool = True               # replay decode steps from CUDA graphs where possible (cuda_graphs.py)

    def __post_init__(self):
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.max_new_tokens < 1:
            raise ValueError(f"GenerationConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"GenerationConfig.min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                             f"got {self.min_new_tokens}")
        if not self.temperature > 0 or self.temperature == float("inf"):
            raise ValueError(f"GenerationConfig.temperature must be > 0 and finite, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"GenerationConfig.top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.n_samples < 1:
            raise ValueError(f"GenerationConfig.n_samples must be >= 1, got {self.n_samples}")


@dataclasses.dataclass
class GenerationOutput:
    """One entry per sample; the n_samples samples of a prompt are adjacent, in prompt order."""
    output_ids: list[list[int]]     # generated tokens only, the stop token included when hit
    logprobs: list[list[float]]     # log-probability of each generated token (see generate())
    stopped: list[bool]             # ended on a stop token (not on max_new_tokens)
    prompt_index: list[int]         # which prompt each sample continues
