"""Tensor- and pipeline-parallel generation with gloo processes equals the
single-process result, greedy and seeded sampling alike (the random streams
are keyed by sample, not by layout)."""
import pytest

from real_ext.generation import GenerationConfig, generate
from real_ext.model import ReaLModel
from python_tests.distributed import run_workers
from python_tests.model.hf_models import save_random_hf

PROMPTS = [[5, 17, 3, 99, 42, 7], [1], [60, 61, 62, 63, 64, 65, 66, 67], [8, 9], [3, 3, 3]]
CONFIGS = [GenerationConfig(max_new_tokens=10, greedy=True),
           GenerationConfig(max_new_tokens=10, temperature=0.9, top_k=40, top_p=0.9, n_samples=2, seed=5,
                            stop_token_ids=(7, 11))]


def _worker(rank, world_size, path, tp, pp):
    from real_ext.parallel import ParallelLayout
    model = ReaLModel.from_pretrained(path, layout=ParallelLayout(tuple(range(world_size)), tp=tp, pp=pp))
    return [generate(model, PROMPTS, cfg) for cfg in CONFIGS]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)])
def test_parallel_generation_matches_single_process(family, tp, pp, tmp_path):
    save_random_hf(family, tmp_path, seed=2)
    single = ReaLModel.from_pretrained(str(tmp_path))
    expected = [generate(single, PROMPTS, cfg) for cfg in CONFIGS]
    for rank_outputs in run_workers(_worker, tp * pp, str(tmp_path), tp, pp):
        for out, ref in zip(rank_outputs, expected):
            assert out.output_ids == ref.output_ids
            assert out.stopped == ref.stopped
            for a, b in zip(out.logprobs, ref.logprobs):
                assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
