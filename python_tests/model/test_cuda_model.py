"""The model on a GPU: float32 parity with HF, bfloat16 error within twice
HF's own bfloat16 error, and a bfloat16 training step with float32 masters."""
import math

import pytest
import torch
import transformers

from real_ext.model import ReaLModel
from real_ext.model.train import OptimConfig, Trainer
from python_tests.conftest import HAS_CUDA, cu_seqlens
from python_tests.model.hf_models import hf_logits_per_sequence, save_random_hf
from python_tests.model.parallel_workers import loss_fn, make_batch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
LENGTHS = [33, 1, 70, 8]


def _inputs():
    ids = torch.randint(0, 101, (sum(LENGTHS),), generator=torch.Generator().manual_seed(0))
    return ids.cuda(), cu_seqlens(LENGTHS, "cuda")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_logits_on_cuda(family, tmp_path):
    save_random_hf(family, tmp_path)
    ids, cu = _inputs()
    hf32 = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").cuda().eval()
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="sdpa",
                                                             dtype=torch.bfloat16).cuda().eval()
    ref = hf_logits_per_sequence(hf32, ids.cpu(), cu.cpu()).cuda()
    hf_bf16 = hf_logits_per_sequence(hf16, ids.cpu(), cu.cpu()).cuda().float()
    with torch.no_grad():
        ours32 = ReaLModel.from_pretrained(str(tmp_path), device="cuda")(ids, cu)
        ours16 = ReaLModel.from_pretrained(str(tmp_path), device="cuda", dtype=torch.bfloat16)(ids, cu).float()
    scale = ref.abs().max()
    assert (ours32 - ref).abs().max() < 1e-4 * scale
    assert (ours16 - ref).abs().max() <= 2 * (hf_bf16 - ref).abs().max() + 1e-3 * scale


def test_bfloat16_train_step_on_cuda(tmp_path):
    save_random_hf("llama", tmp_path)
    model = ReaLModel.from_pretrained(str(tmp_path), device="cuda", dtype=torch.bfloat16)
    trainer = Trainer(model, OptimConfig(lr=1e-3))
    batch = make_batch().to("cuda")
    stats = trainer.train_step(batch, loss_fn, loss_weight=lambda mb: mb.n_tokens - mb.n_seqs)
    assert math.isfinite(stats["loss"]) and stats["grad_norm"] > 0
    assert trainer.master.dtype == torch.float32 and torch.equal(model.flat, trainer.master.to(torch.bfloat16))
