"""A model's layouts: Hugging Face tensors in and out of the flat buffers the
model itself uses, and every tensor-parallel piece contiguous in memory (row-
parallel weights are stored transposed, see real_ext/model/shards.py)."""
import torch

from real_ext.model import ModelConfig
from real_ext.model.params import param_specs
from real_ext.model.shards import ModelShards
from real_ext.parallel.layout import ParallelLayout
from real_ext.realloc import Layout, plan
from python_tests.model.parallel_workers import LLAMA
from python_tests.realloc.layouts import random_pair


def _hf_state(config: ModelConfig, head: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {s.name: torch.randn(s.shape, generator=g) for s in param_specs(config, head) if not s.tied_to}


def test_params_of_gives_megatron_slices_of_hf_tensors():
    config = ModelConfig.from_hf_dict(LLAMA)
    state = _hf_state(config, "lm")
    tp = 2
    layout = Layout.from_config(config, [0, 1], 1, tp, 1)
    model_shards = ModelShards(config, "lm", ParallelLayout((0, 1), 1, tp, 1))
    for rank in (0, 1):
        buf = layout.shard_of(state, rank)
        views = layout.params_of(buf, rank)
        o, down = "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"
        q = "model.layers.0.self_attn.q_proj.weight"
        # Megatron's split of the Hugging Face (out, in) tensors: o/down by input columns, q by output rows.
        assert torch.equal(views[o], state[o].chunk(tp, dim=1)[rank])
        assert torch.equal(views[down], state[down].chunk(tp, dim=1)[rank])
        assert torch.equal(views[q], state[q].chunk(tp, dim=0)[rank])
        # The buffer is the one the model binds its parameters to.
        for s in model_shards.shards(rank):
            if not s.spec.tied_to:
                assert torch.equal(s.view(buf), views[s.spec.name]), s.spec.name
        assert o in layout.transposed and q not in layout.transposed


def test_model_layout_pairs_move_only_contiguous_pieces():
    # Every piece of every plan between model layouts is one run of memory in
    # both buffers: the executor sends it as it lies, no pack or unpack copy.
    for seed in range(100):
        _, _, src, dst = random_pair(seed)
        for row in plan(src, dst).tensor.tolist():
            rows, cols, src_ld, dst_ld = row[4] - row[3], row[6] - row[5], row[8], row[10]
            assert rows == 1 or (src_ld == cols and dst_ld == cols), (seed, row)
