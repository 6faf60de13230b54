"""Reference sampling: scaled float32 logits (exactly the op's z), then sort-based
top-k / top-p and the inverse CDF in float64.

``truncated_log_softmax`` gives, for every row, the log of the distribution that
``sample_tokens`` draws from; training uses it so that the log-probs it
differentiates match the ones recorded at generation."""
import torch


def scaled_logits(logits, temperature=1.0, suppress=None, banned=None):
    """``z = logits / temperature`` in float32 (the op's rounding), banned ids -inf in suppressed rows."""
    z = logits.float() / torch.tensor(temperature, dtype=torch.float32, device=logits.device)
    if suppress is not None and banned is not None and banned.numel() > 0:
        is_banned = torch.zeros(z.shape[-1], dtype=torch.bool, device=z.device)
        is_banned[banned] = True
        z = z.masked_fill(suppress[:, None] & is_banned[None, :], float("-inf"))
    return z


def keep_mask(z, top_k=0, top_p=1.0):
    """Bool ``(B, V)``: the tokens kept by top-k then top-p (ties at either boundary kept)."""
    _check_rows(z)
    keep = z > float("-inf")
    vocab = z.shape[-1]
    if 0 < top_k < vocab:
        kth = z.topk(top_k, dim=-1).values[:, -1:]
        keep &= z >= kth
    if top_p < 1.0:
        zk = z.double().masked_fill(~keep, float("-inf"))
        p = torch.softmax(zk, dim=-1)
        sorted_z, order = zk.sort(dim=-1, descending=True)
        cum = p.gather(-1, order).cumsum(-1)
        # The first sorted position whose cumulative mass reaches top_p; its value z* is
        # the threshold, and every token tied with it is kept.
        first = (cum < top_p).sum(-1, keepdim=True).clamp(max=keep.sum(-1, keepdim=True) - 1)
        keep &= zk >= sorted_z.gather(-1, first)
    return keep


def sample_tokens(logits, uniform, *, greedy=False, temperature=1.0, top_k=0, top_p=1.0, suppress=None,
                  banned=None):
    z = scaled_logits(logits, temperature, suppress, banned)
    _check_rows(z)
    if greedy:
        tokens = z.argmax(-1)  # the first maximal index
        logprobs = torch.log_softmax(z.double(), -1).gather(-1, tokens[:, None])[:, 0]
        return tokens, logprobs.float()
    keep = keep_mask(z, top_k, top_p)
    logq = torch.log_softmax(z.double().masked_fill(~keep, float("-inf")), -1)
    cdf = logq.exp().cumsum(-1)
    tokens = (cdf <= uniform.double()[:, None]).sum(-1)  # the first index whose CDF exceeds u
    last_kept = z.shape[-1] - 1 - keep.flip(-1).int().argmax(-1)
    tokens = torch.where(tokens < z.shape[-1], tokens, last_kept)
    return tokens, logq.gather(-1, tokens[:, None])[:, 0].float()


def truncated_log_softmax(logits, temperature=1.0, top_k=0, top_p=1.0):
    """``(T, V)`` float32 log of the distribution sampled from: log q on kept tokens, -inf
    elsewhere. Differentiable in ``logits`` (the kept set is held fixed)."""
    z = logits.float() / torch.tensor(temperature, dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        keep = keep_mask(z, top_k, top_p)
    return torch.log_softmax(z.masked_fill(~keep, float("-inf")), -1)


def _check_rows(z):
    bad = ~(z > float("-inf")).any(-1)
    if bad.any():
        raise ValueError(f"logits row {int(bad.nonzero()[0])} has no finite logit")
