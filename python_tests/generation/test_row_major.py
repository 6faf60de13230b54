"""generate()'s row-major copies of the transposed (row-parallel) weights
(real_ext/model/row_major.py): they exist only inside the call, products
without autograd read them, and a flat buffer rewritten in place between two
calls (as the reallocation engine does) is what the next call reads."""
import pytest
import torch

from real_ext.generation import GenerationConfig, generate
from real_ext.model import ReaLModel
from real_ext.model.layers import Linear
from real_ext.model.row_major import row_major_products
from python_tests.model.hf_models import save_random_hf

PROMPTS = [[5, 17, 3, 99, 42, 7], [1, 2], [60, 61, 62, 63, 64, 65, 66, 67]]


def transposed_linears(model):
    return [m for m in model.modules() if isinstance(m, Linear) and m.weight.stride(0) == 1 and m.weight.dim() == 2
            and m.weight.stride(1) != 1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    out = []
    for seed in (1, 2):
        path = tmp_path_factory.mktemp(f"llama{seed}")
        save_random_hf("llama", path, seed=seed)
        out.append(str(path))
    return out


def test_copies_live_only_inside_the_block(paths):
    model = ReaLModel.from_pretrained(paths[0])
    linears = transposed_linears(model)
    assert len(linears) == 2 * model.config.num_layers  # o_proj and down_proj of every layer
    with row_major_products(model):
        for m in linears:
            assert m.row_major.is_contiguous() and torch.equal(m.row_major, m.weight)
            with torch.no_grad():
                assert m.product_weight() is m.row_major
            assert m.product_weight() is m.weight  # autograd on: the parameter itself
        with row_major_products(model):  # nested: the outer copies stay
            inner = [m.row_major for m in linears]
        assert all(m.row_major is c for m, c in zip(linears, inner))
    assert all(m.row_major is None for m in linears)
    with pytest.raises(RuntimeError, match="inside"):
        with row_major_products(model):
            raise RuntimeError("inside")
    assert all(m.row_major is None for m in linears)


def test_generate_reads_a_flat_buffer_rewritten_between_calls(paths):
    model, other = ReaLModel.from_pretrained(paths[0]), ReaLModel.from_pretrained(paths[1])
    cfg = GenerationConfig(max_new_tokens=8, greedy=True)
    first, expected = generate(model, PROMPTS, cfg), generate(other, PROMPTS, cfg)
    assert first.output_ids != expected.output_ids  # the two models differ
    assert all(m.row_major is None for m in transposed_linears(model))
    # In place and unseen by torch's version counters, as the reallocation engine writes it.
    model.flat.numpy()[:] = other.flat.numpy()
    again = generate(model, PROMPTS, cfg)
    assert again.output_ids == expected.output_ids
    assert again.logprobs == expected.logprobs
