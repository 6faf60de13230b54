"""Packed ReaLModel against Hugging Face transformers on random tiny models of
every family: logits, and checkpoints both ways."""
import json
import os

import pytest
import torch
import transformers

from real_ext.model import ReaLModel
from python_tests.conftest import cu_seqlens
from python_tests.model.hf_models import FAMILIES, VOCAB, hf_logits_per_sequence, save_random_hf

LENGTHS = [5, 1, 17, 40, 2]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (sum(LENGTHS),), generator=g), cu_seqlens(LENGTHS)


def _rel(a, b):
    return (a - b).abs().max().item() / b.abs().max().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_hf(family, tmp_path):
    hf = save_random_hf(family, tmp_path / "hf")
    ours = ReaLModel.from_pretrained(str(tmp_path / "hf"))
    ids, cu = _batch()
    with torch.no_grad():
        logits = ours(ids, cu)
    assert logits.shape == (ids.shape[0], VOCAB)
    assert _rel(logits, hf_logits_per_sequence(hf, ids, cu)) < 1e-4


def test_rope_table_rows_equal_computed_angles(tmp_path, monkeypatch):
    # Rope models keep cos/sin of their positions in a table; past its size they
    # compute them per forward: both give the same logits, bit for bit.
    save_random_hf("llama", tmp_path / "hf")
    ours = ReaLModel.from_pretrained(str(tmp_path / "hf"))
    ids, cu = _batch()
    with torch.no_grad():
        from_table = ours(ids, cu)
        assert ours._rope_table is not None
        monkeypatch.setattr("real_ext.model.model.ROPE_TABLE_POSITIONS", 8)  # LENGTHS reach 40
        other = ReaLModel.from_pretrained(str(tmp_path / "hf"))
        computed = other(ids, cu)
        assert other._rope_table is None
    assert torch.equal(from_table, computed)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_hf_load(family, tmp_path):
    hf = save_random_hf(family, tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")  # tokenizer files travel along
    ours = ReaLModel.from_pretrained(str(tmp_path / "hf"))
    ours.save_pretrained(str(tmp_path / "ours"))
    assert (tmp_path / "ours" / "tokenizer.json").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ours"),
                                                                 attn_implementation="eager").eval()
    ids, cu = _batch(1)
    assert _rel(hf_logits_per_sequence(reloaded, ids, cu), hf_logits_per_sequence(hf, ids, cu)) < 1e-6


def test_sharded_save_with_index(tmp_path):
    save_random_hf("llama", tmp_path / "hf")
    ours = ReaLModel.from_pretrained(str(tmp_path / "hf"))
    ours.save_pretrained(str(tmp_path / "ours"), max_shard_bytes=200_000)
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = ReaLModel.from_pretrained(str(tmp_path / "ours"))
    ids, cu = _batch(2)
    with torch.no_grad():
        assert torch.equal(again(ids, cu), ours(ids, cu))


def test_value_head_round_trip(tmp_path):
    save_random_hf("qwen2", tmp_path / "hf")
    critic = ReaLModel.from_pretrained(str(tmp_path / "hf"), head="value")
    ids, cu = _batch(3)
    with torch.no_grad():
        values = critic(ids, cu)
    assert values.shape == (ids.shape[0],) and torch.isfinite(values).all()
    critic.save_pretrained(str(tmp_path / "critic"))
    assert (tmp_path / "critic" / "value_head.safetensors").exists()
    again = ReaLModel.from_pretrained(str(tmp_path / "critic"), head="value")
    with torch.no_grad():
        assert torch.equal(again(ids, cu), values)
    # The backbone is a plain HF checkpoint.
    transformers.AutoModel.from_pretrained(str(tmp_path / "critic"))


def test_save_replaces_an_existing_checkpoint_atomically(tmp_path):
    save_random_hf("gpt2", tmp_path / "hf")
    ours = ReaLModel.from_pretrained(str(tmp_path / "hf"))
    target = tmp_path / "ckpt"
    ours.save_pretrained(str(target))
    (target / "stale.txt").write_text("from an older save")
    ours.save_pretrained(str(target))
    assert not (target / "stale.txt").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]
