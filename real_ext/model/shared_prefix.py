"""Shared-prefix packing: run the tokens that several sequences share once.

GRPO trains on n samples of each prompt, PPO on several responses per prompt:
a packed batch repeats every prompt n times. With causal attention a prefix's
hidden states depend on the prefix alone, so adjacent sequences that start
with the same tokens can share that prefix's computation: the forward runs on
the unique tokens U (each group's prefix once, then every member's own
suffix) and each member's suffix attends over the prefix's keys and its own
(one varlen attention call: a suffix segment's keys are gathered as
[prefix, suffix], which the causal mask aligns bottom-right). The final hidden
states are gathered back to the batch's (T, hidden) layout, so losses and
log-probs read them unchanged; in the backward the gather sums every member's
gradient into the shared prefix, which is the gradient of the unshared
forward. Prompts as long as the responses halve the work of a training step.
"""
from __future__ import annotations

import dataclasses

import torch

MIN_SAVING = 0.1  # share only when it removes at least this fraction of the tokens


@dataclasses.dataclass
class SharedPrefix:
    input_ids: torch.Tensor    # (U,) the unique tokens: per group its prefix, then each member's suffix
    positions: torch.Tensor    # (U,) each token's position in its sequence
    cu_seqlens_q: torch.Tensor  # (S+1,) int32 attention segments of U (a prefix, or one member's suffix)
    cu_seqlens_k: torch.Tensor  # (S+1,) int32 their key segments in kv_index
    kv_index: torch.Tensor     # rows of U that each segment attends to, in order
    gather: torch.Tensor       # (T,) the row of U of every token of the batch
    max_len_q: int
    max_len_k: int

    @property
    def saved(self) -> int:
        return self.gather.shape[0] - self.input_ids.shape[0]


def _common_prefix(ids: list[int], a0: int, b0: int, n: int) -> int:
    """Length of the common prefix of ids[a0:a0+n] and ids[b0:b0+n]: a binary
    search over slice comparisons (C speed; prompts run to thousands of tokens)."""
    if ids[a0:a0 + n] == ids[b0:b0 + n]:
        return n
    lo, hi = 0, n  # the first lo tokens agree, the first hi do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ids[a0:a0 + mid] == ids[b0:b0 + mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _groups(ids: list[int], cu: list[int]) -> list[tuple[int, int, int]]:
    """Runs [first, stop) of adjacent sequences sharing their first `length`
    tokens with the run's first sequence (length 0: a sequence alone). A
    sequence joins while the tokens saved do not drop: the next prompt's first
    sample, sharing only a chat template's first tokens, starts a run of its own."""
    out, b, i = [], len(cu) - 1, 0
    while i < b:
        length, j = cu[i + 1] - cu[i], i + 1
        while j < b:
            common = _common_prefix(ids, cu[i], cu[j], min(length, cu[j + 1] - cu[j]))
            members = j - i  # before j joins; saved tokens: (members - 1) * length
            if common == 0 or members * common < (members - 1) * length:
                break
            length, j = common, j + 1
        out.append((i, j, length if j > i + 1 else 0))
        i = j
    return out


def plan_shared_prefix(input_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                       min_saving: float = MIN_SAVING) -> SharedPrefix | None:
    """The shared-prefix layout of a packed batch, or None when sharing would
    remove less than `min_saving` of its tokens."""
    total = input_ids.shape[0]
    if total == 0:
        return None
    ids, cu = input_ids.tolist(), cu_seqlens.tolist()
    groups = _groups(ids, cu)
    saved = sum((stop - first - 1) * length for first, stop, length in groups)
    if saved < min_saving * total:
        return None
    # Ranges of: batch rows taken into U, their positions, U rows each
    # segment attends to, U rows of every batch token; u: rows of U so far.
    u_ids, u_pos, kv, gather = [], [], [], []
    seg_q, seg_k, u = [0], [0], 0

    def add_segment(queries: range, keys: list[range]):
        seg_q.append(seg_q[-1] + len(queries))
        kv.extend(keys)
        seg_k.append(seg_k[-1] + sum(len(r) for r in keys))

    for first, stop, length in groups:
        prefix = range(u, u + length)
        if length:
            u_ids.append(range(cu[first], cu[first] + length))
            u_pos.append(range(0, length))
            add_segment(prefix, [prefix])
            u += length
        for s in range(first, stop):
            n = cu[s + 1] - cu[s] - length
            own = range(u, u + n)
            u_ids.append(range(cu[s] + length, cu[s + 1]))
            u_pos.append(range(length, length + n))
            add_segment(own, [prefix, own])
            gather.extend([prefix, own])
            u += n
    device = input_ids.device

    def rows(ranges: list[range]) -> torch.Tensor:
        """The ranges' integers, concatenated (no tensor per range: thousands of them)."""
        starts = torch.tensor([r.start for r in ranges], dtype=torch.int64)
        lengths = torch.tensor([len(r) for r in ranges], dtype=torch.int64)
        n = int(lengths.sum())
        shift = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths, output_size=n)
        return torch.arange(n, dtype=torch.int64) + shift

    pick = rows(u_ids).to(device)
    q_lens = [b - a for a, b in zip(seg_q, seg_q[1:])]
    k_lens = [b - a for a, b in zip(seg_k, seg_k[1:])]
    return SharedPrefix(
        input_ids=input_ids.index_select(0, pick), positions=rows(u_pos).to(device),
        cu_seqlens_q=torch.tensor(seg_q, dtype=torch.int32, device=device),
        cu_seqlens_k=torch.tensor(seg_k, dtype=torch.int32, device=device),
        kv_index=rows(kv).to(device), gather=rows(gather).to(device),
        max_len_q=max(q_lens, default=0), max_len_k=max(k_lens, default=0))
