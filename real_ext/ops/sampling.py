"""Fused token sampling from logits: ``sample_tokens`` and its fake rule."""
import torch

_sample = torch.ops.real_ext.sample_tokens


def sample_tokens(
    logits: torch.Tensor,
    uniform: torch.Tensor,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    suppress: torch.Tensor | None = None,
    banned: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` ``(B, V)``; returns ``(tokens, logprobs)``, int64 and float32 ``(B,)``.

    All math is float32 (logits float32 or bfloat16; float16 on CUDA too). Per row:
    ``banned`` ids (int64 ``(n,)``) become -inf where ``suppress`` (bool ``(B,)``) is set;
    ``z = logits / temperature``; greedy takes the argmax (lowest index among ties).
    Otherwise the kept tokens are those with ``z >=`` the ``top_k``-th largest (``top_k > 0``)
    and, among them, the smallest set of most probable tokens with renormalised mass
    ``>= top_p`` (ties at either boundary kept); the token is the first kept index whose
    cumulative renormalised probability, in token order, exceeds ``uniform[b]`` in [0, 1).
    ``logprobs`` are under the distribution drawn from (greedy: the untruncated softmax),
    matching ``real_ext.ref.truncated_log_softmax``. ``suppress`` defaults to all False and
    ``banned`` to empty; ``uniform`` is float32 ``(B,)`` and ignored when greedy.
    """
    if suppress is None:
        suppress = torch.zeros(logits.shape[:1], dtype=torch.bool, device=logits.device)
    if banned is None:
        banned = torch.empty(0, dtype=torch.int64, device=logits.device)
    return _sample(logits, uniform, suppress, banned, bool(greedy), float(temperature), int(top_k), float(top_p))


@torch.library.register_fake("real_ext::sample_tokens")
def _sample_tokens_fake(logits, uniform, suppress, banned, greedy, temperature, top_k, top_p):
    batch = logits.shape[0]
    return (logits.new_empty((batch,), dtype=torch.int64), logits.new_empty((batch,), dtype=torch.float32))
