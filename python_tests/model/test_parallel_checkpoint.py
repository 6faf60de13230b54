"""Sharded checkpoints: each rank of a (tp=2, pp=2) layout reads only its own
slices of a HF checkpoint, computes the single-process logits, and the sharded
model saves a checkpoint that HF loads to the same logits."""
import torch
import transformers

from real_ext.model import ReaLModel
from real_ext.model import checkpoint as checkpoint_module
from python_tests.conftest import cu_seqlens
from python_tests.distributed import run_workers
from python_tests.model.hf_models import hf_logits_per_sequence, save_random_hf

LENGTHS = [9, 1, 14]


def _ids():
    return torch.randint(0, 101, (sum(LENGTHS),), generator=torch.Generator().manual_seed(4))


def _worker(rank, world_size, src, dst):
    from real_ext.parallel import ParallelLayout
    read = []
    original = checkpoint_module.TensorReader.read

    def counting_read(self, key, index):
        out = original(self, key, index)
        read.append(out.numel())
        return out
    checkpoint_module.TensorReader.read = counting_read
    model = ReaLModel.from_pretrained(src, layout=ParallelLayout((0, 1, 2, 3), tp=2, pp=2))
    held = sum(s.box_numel for s in model.shards)
    with torch.no_grad():
        logits = model(_ids(), cu_seqlens(LENGTHS), n_microbatches=2)
    model.save_pretrained(dst)
    return sum(read), held, logits


def test_sharded_load_and_save(tmp_path):
    for family in ("llama", "gpt2"):
        src, dst = tmp_path / f"{family}_hf", tmp_path / f"{family}_saved"
        hf = save_random_hf(family, src)
        total = sum(p.numel() for p in hf.parameters())
        results = run_workers(_worker, 4, str(src), str(dst))
        expected = hf_logits_per_sequence(hf, _ids(), cu_seqlens(LENGTHS))
        for read, held, logits in results:
            assert read == held < total / 2, (family, read, held, total)  # only this rank's slices
            if logits is not None:
                assert (logits - expected).abs().max() < 1e-4 * expected.abs().max()
        assert sum(r[2] is not None for r in results) == 2  # the two last-stage ranks
        saved = transformers.AutoModelForCausalLM.from_pretrained(str(dst), attn_implementation="eager").eval()
        again = hf_logits_per_sequence(saved, _ids(), cu_seqlens(LENGTHS))
        assert (again - expected).abs().max() < 1e-6 * expected.abs().max()
