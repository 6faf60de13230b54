"""Bad models, layouts, checkpoints and batches fail early with errors that
name the field and what was expected."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from real_ext.model import ModelConfig, ReaLModel, UnsupportedModelError
from real_ext.model.checkpoint import CheckpointError
from real_ext.model.train import OptimConfig
from real_ext.parallel import LayoutError, ParallelLayout
from python_tests.conftest import cu_seqlens
from python_tests.model.hf_models import save_random_hf
from python_tests.model.parallel_workers import LLAMA


def _config(**changes):
    return ModelConfig.from_hf_dict({**LLAMA, **changes})


def test_unsupported_family_lists_supported():
    with pytest.raises(UnsupportedModelError, match="model_type='bert'.*supported: llama, qwen2, mistral, gpt2"):
        ModelConfig.from_hf_dict({"model_type": "bert"})


@pytest.mark.parametrize("changes,message", [
    (dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    (dict(num_key_value_heads=3), "must be a multiple of num_key_value_heads=3"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope type 'yarn' is not supported"),
    (dict(head_dim=512), "head_dim=512 exceeds 256"),
])
def test_unsupported_config_fields(changes, message):
    with pytest.raises(UnsupportedModelError, match=message):
        _config(**changes)


@pytest.mark.parametrize("layout,message", [
    (ParallelLayout((0, 1, 2), tp=3), "tp=3 must divide num_attention_heads=4"),
    (ParallelLayout(tuple(range(8)), pp=8), "pp=8 exceeds the number of layers"),
])
def test_layouts_that_cannot_split_the_model(layout, message):
    with pytest.raises((LayoutError, ValueError), match=message):
        ReaLModel(_config(), layout=layout)


def test_kv_heads_and_tp_must_divide_one_another():
    config = _config(num_attention_heads=6, num_key_value_heads=3, hidden_size=48)
    with pytest.raises(LayoutError, match="tp=2 and num_key_value_heads=3 must divide one another"):
        ReaLModel(config, layout=ParallelLayout((0, 1), tp=2))


def test_intermediate_size_must_split():
    with pytest.raises(LayoutError, match="tp=4 must divide intermediate_size=66"):
        ReaLModel(_config(intermediate_size=66), layout=ParallelLayout((0, 1, 2, 3), tp=4))


def test_layout_arithmetic():
    with pytest.raises(LayoutError, match=r"dp\*tp\*pp = 2\*2\*1 = 4 must equal the mesh size 3"):
        ParallelLayout((0, 1, 2), dp=2, tp=2)
    with pytest.raises(LayoutError, match="distinct"):
        ParallelLayout((0, 0), dp=2)


def test_dtype_the_device_cannot_run():
    with pytest.raises(ValueError, match="dtype torch.float16 cannot run on cpu"):
        ReaLModel(_config(), dtype=torch.float16)


def test_checkpoint_missing_tensor(tmp_path):
    save_random_hf("llama", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks tensor 'model.layers.1.mlp.up_proj.weight'.*\[96, 64\]"):
        ReaLModel.from_pretrained(str(tmp_path))


def test_checkpoint_tensor_with_wrong_shape(tmp_path):
    save_random_hf("gpt2", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_inner"] = 128  # the checkpoint's MLP is 256 wide
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'transformer.h.0.mlp.c_fc.weight' has shape \[64, 256\], but "
                                              r"config.json implies \[64, 128\]"):
        ReaLModel.from_pretrained(str(tmp_path))


def test_missing_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ReaLModel.from_pretrained(str(tmp_path))
    save_random_hf("llama", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        ReaLModel.from_pretrained(str(tmp_path))


def test_bad_batches():
    model = ReaLModel.from_config(_config())
    ids = torch.arange(10)
    with pytest.raises(ValueError, match="input_ids must be int64"):
        model(ids.int(), cu_seqlens([10]))
    with pytest.raises(ValueError, match="cu_seqlens must be int32"):
        model(ids, cu_seqlens([10]).long())
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\]=9 must equal len\(input_ids\)=10"):
        model(ids, cu_seqlens([9]))


def test_sequence_longer_than_the_model_allows(tmp_path):
    save_random_hf("gpt2", tmp_path)
    model = ReaLModel.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=256"):
        model(torch.zeros(300, dtype=torch.long), cu_seqlens([300]))


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=0.0), "lr must be > 0"),
    (dict(weight_decay=-1.0), "weight_decay must be >= 0"),
    (dict(schedule="step"), "schedule 'step' unknown"),
    (dict(schedule="cosine", total_steps=0), "needs total_steps > warmup_steps"),
    (dict(betas=(0.9, 1.0)), r"betas must be in \[0, 1\)"),
])
def test_bad_optimizer_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**kwargs)
