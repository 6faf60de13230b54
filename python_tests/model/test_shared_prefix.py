"""Shared-prefix packing (real_ext/model/shared_prefix.py): the layout
reconstructs the batch, and a forward and backward through it equal HF's
logits and the unshared forward's gradients on every model family."""
import random

import pytest
import torch

from real_ext.model import ReaLModel
from real_ext.model.shared_prefix import plan_shared_prefix
from python_tests.conftest import cu_seqlens
from python_tests.model.hf_models import FAMILIES, VOCAB, hf_logits_per_sequence, save_random_hf


def _grouped_batch(seed: int, prompts: int = 3, samples: int = 4, shared_start: bool = True):
    """Prompts of 3..9 tokens, each followed by `samples` responses of 0..8
    tokens (adjacent); with shared_start every prompt begins with the same two
    tokens, as a chat template's do."""
    rng = random.Random(seed)
    seqs = []
    for _ in range(prompts):
        prompt = ([7, 8] if shared_start else []) + [rng.randrange(VOCAB) for _ in range(rng.randrange(3, 10))]
        seqs += [prompt + [rng.randrange(VOCAB) for _ in range(rng.randrange(0, 9))] for _ in range(samples)]
    return torch.tensor([t for s in seqs for t in s]), cu_seqlens([len(s) for s in seqs]), seqs


def _positions(cu):
    return torch.cat([torch.arange(b - a) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])


@pytest.mark.parametrize("seed", range(20))
def test_layout_reconstructs_the_batch(seed):
    rng = random.Random(seed)
    ids, cu, seqs = _grouped_batch(seed, prompts=rng.randrange(1, 5), samples=rng.randrange(1, 6),
                                   shared_start=rng.random() < 0.5)
    shared = plan_shared_prefix(ids, cu, min_saving=0.0)
    assert torch.equal(shared.input_ids[shared.gather], ids)
    assert torch.equal(shared.positions[shared.gather], _positions(cu))
    # Every token's row sits in a segment whose keys are exactly its sequence's
    # tokens up to the segment's end, in order (what causal attention may see).
    q_cu, k_cu = shared.cu_seqlens_q.tolist(), shared.cu_seqlens_k.tolist()
    segment_keys = [shared.kv_index[a:b].tolist() for a, b in zip(k_cu[:-1], k_cu[1:])]
    for s, seq in enumerate(seqs):
        rows = shared.gather[cu[s]:cu[s + 1]].tolist()
        last = rows[-1] if rows else None
        seg = next(i for i in range(len(q_cu) - 1) if q_cu[i] <= last < q_cu[i + 1]) if rows else None
        if seg is not None:
            assert segment_keys[seg] == rows[:len(segment_keys[seg])]
            assert shared.input_ids[segment_keys[seg]].tolist() == seq[:len(segment_keys[seg])]
            assert len(segment_keys[seg]) == len(seq)
    assert shared.max_len_q == max(b - a for a, b in zip(q_cu[:-1], q_cu[1:]))


def test_groups_stop_at_the_next_prompt():
    # Three samples of prompt A, two of B (A and B share their first two
    # tokens), then a lone sequence: A's prefix is shared 3 times, B's twice.
    a, b = [7, 8, 1, 2, 3], [7, 8, 4, 5]
    seqs = [a + [9], a + [10, 11], a, b + [12], b + [13], [14, 15]]
    ids, cu = torch.tensor([t for s in seqs for t in s]), cu_seqlens([len(s) for s in seqs])
    shared = plan_shared_prefix(ids, cu, min_saving=0.0)
    assert shared.saved == 2 * len(a) + len(b)
    assert shared.input_ids.tolist() == a + [9, 10, 11] + b + [12, 13, 14, 15]


def test_no_sharing_below_the_threshold():
    ids, cu, _ = _grouped_batch(0, prompts=4, samples=1, shared_start=False)
    assert plan_shared_prefix(ids, cu) is None


def _param_grads(model, hidden_fn, ids, cu, weights):
    model.zero_grad(set_to_none=True)
    hidden = hidden_fn()
    logp = model.token_logprobs(hidden, torch.roll(ids, -1))
    (logp * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_and_gradients_match(family, tmp_path):
    hf = save_random_hf(family, tmp_path / "hf")
    model = ReaLModel.from_pretrained(str(tmp_path / "hf"))
    ids, cu, _ = _grouped_batch(1)
    assert plan_shared_prefix(ids, cu) is not None  # the batch does share
    with torch.no_grad():
        logits = model(ids, cu)
    ref = hf_logits_per_sequence(hf, ids, cu)
    assert (logits - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    weights = torch.randn(ids.shape[0], generator=torch.Generator().manual_seed(2))
    shared = _param_grads(model, lambda: model.forward_packed(ids, cu), ids, cu, weights)
    plain = _param_grads(model, lambda: model.forward_stage(ids, model.packed_info(cu)), ids, cu, weights)
    assert shared.keys() == plain.keys()
    for name, g in plain.items():
        assert (shared[name] - g).abs().max().item() <= 1e-5 * max(1.0, g.abs().max().item()), name
