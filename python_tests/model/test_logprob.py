"""Fused, chunked log-probabilities against log_softmax on full logits (float64)."""
import pytest
import torch

from real_ext.model import ReaLModel
from real_ext.model import logprob as logprob_module
from real_ext.model.logprob import fused_logprobs, next_token_targets
from python_tests.conftest import cu_seqlens
from python_tests.model.hf_models import save_random_hf


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_elements", [1 << 24, 300])  # one chunk, and many ragged chunks
def test_fused_matches_log_softmax(temperature, chunk_elements, monkeypatch):
    monkeypatch.setattr(logprob_module, "CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(23, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 23, (37,), generator=g)
    grad = torch.randn(37, generator=g)
    out = fused_logprobs(hidden, weight, targets, temperature=temperature)
    dh, dw = torch.autograd.grad(out, (hidden, weight), grad)
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = torch.log_softmax(h64 @ w64.t() / temperature, -1).gather(1, targets[:, None]).squeeze(1)
    rh, rw = torch.autograd.grad(ref, (h64, w64), grad.double())
    assert (out.double() - ref).abs().max() < 1e-5
    assert (dh.double() - rh).abs().max() < 1e-4 * rh.abs().max()
    assert (dw.double() - rw).abs().max() < 1e-4 * rw.abs().max()


def test_padded_vocab_columns_are_excluded():
    # A weight with 3 padding rows beyond vocab_size must give the unpadded answer.
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(9, 8, generator=g), torch.randn(10, 8, generator=g)
    targets = torch.randint(0, 10, (9,), generator=g)
    padded = torch.cat([weight, torch.randn(3, 8, generator=g)])
    a = fused_logprobs(hidden, padded, targets, vocab_size=10)
    b = fused_logprobs(hidden, weight, targets)
    assert torch.allclose(a, b, atol=1e-6)


def test_model_logprobs_match_logits(tmp_path):
    save_random_hf("llama", tmp_path)
    model = ReaLModel.from_pretrained(str(tmp_path))
    lengths = [6, 1, 11]
    ids = torch.randint(0, 101, (sum(lengths),), generator=torch.Generator().manual_seed(2))
    cu = cu_seqlens(lengths)
    with torch.no_grad():
        lp = model.logprobs(ids, cu, temperature=0.9)
        logits = model(ids, cu).double() / 0.9
    targets, valid = next_token_targets(ids, cu)
    ref = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1) * valid
    assert (lp.double() - ref).abs().max() < 1e-5
    assert valid.tolist() == [True] * 5 + [False, False] + [True] * 10 + [False]
