"""Generalized advantage estimation over a packed batch."""
import torch

_gae = torch.ops.real_ext.gae


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    cu_seqlens: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lam) per sequence of a packed batch; returns ``(advantages, returns)``.

    rewards: float ``(T,)``. values: ``(T + B,)``, sequence ``i`` owning
    ``values[cu_seqlens[i] + i : cu_seqlens[i+1] + i + 1]``, whose last entry is the
    value after the final token; ``bootstrap[i]`` False makes that entry count as 0
    (the sequence ended with EOS). ``returns = advantages + values`` per token.
    """
    return _gae(rewards, values, cu_seqlens, bootstrap, float(gamma), float(lam))


@torch.library.register_fake("real_ext::gae")
def _gae_fake(rewards, values, cu_seqlens, bootstrap, gamma, lam):
    return torch.empty_like(rewards), torch.empty_like(rewards)
