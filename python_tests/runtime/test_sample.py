"""SequenceSample: samples with nested lengths (a prompt's n responses, a
chosen/rejected pair) packed per key; unpacking, gathering and flattening into
a PackedBatch keep every sequence intact and in order."""
from __future__ import annotations

import pytest
import torch

from real_ext.data.sample import SequenceSample


def _group(sid: int, lengths: list[int], plen: int) -> SequenceSample:
    g = torch.Generator().manual_seed(sid)
    ids = [torch.randint(0, 100, (n,), generator=g) for n in lengths]
    return SequenceSample.single(sid, input_ids=ids, logp=[torch.randn(n, generator=g) for n in lengths],
                                 prompt_len=[torch.tensor([plen]) for _ in lengths])


def test_gather_then_unpack_gives_back_each_sample():
    parts = [_group(3, [5, 7, 2], 2), _group(9, [4], 1), _group(1, [6, 6], 3)]
    both = SequenceSample.gather(parts)
    assert both.ids == [3, 9, 1]
    assert both.seqlens["input_ids"] == [[5, 7, 2], [4], [6, 6]]
    assert both.seqlens["prompt_len"] == [[1, 1, 1], [1], [1, 1]]
    for original, back in zip(parts, both.unpack()):
        assert back.ids == original.ids and back.seqlens == original.seqlens
        for key in original.keys:
            assert torch.equal(back.data[key], original.data[key])


def test_packed_lists_every_sequence_with_its_sample_and_index():
    parts = [_group(3, [5, 7, 2], 2), _group(9, [4], 1)]
    batch = SequenceSample.gather(parts).packed(token_keys=("logp",), seq_keys=("prompt_len",))
    assert batch.lengths == [5, 7, 2, 4]
    assert batch.seq_data["sample_id"].tolist() == [3, 3, 3, 9]
    assert batch.seq_data["seq_index"].tolist() == [0, 1, 2, 0]
    assert batch.seq_data["prompt_len"].tolist() == [2, 2, 2, 1]
    expected = torch.cat([parts[0].data["input_ids"], parts[1].data["input_ids"]])
    assert torch.equal(batch.input_ids, expected)
    assert torch.equal(batch.token_data["logp"], torch.cat([parts[0].data["logp"], parts[1].data["logp"]]))


def test_select_and_update_keys():
    a = _group(4, [3, 2], 1)
    only = a.select_keys(["input_ids"])
    assert only.keys == {"input_ids"}
    only.update_(a.select_keys(["logp"]))
    assert only.keys == {"input_ids", "logp"} and torch.equal(only.data["logp"], a.data["logp"])
    with pytest.raises(KeyError, match=r"hold no keys \['values'\]"):
        a.select_keys(["values"])
    with pytest.raises(ValueError, match="cannot merge samples"):
        a.update_(_group(5, [3, 2], 1))


def test_inconsistent_lengths_are_rejected():
    with pytest.raises(ValueError, match=r"key 'x': 5 entries, the lengths add up to 4"):
        SequenceSample([0], {"x": [[1, 3]]}, {"x": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"lengths for 2 samples, expected 1"):
        SequenceSample([0], {"x": [[1], [2]]}, {"x": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"not nested like 'input_ids'"):
        s = _group(0, [3, 2], 1)
        s.seqlens["logp"], s.data["logp"] = [[5]], torch.zeros(5)
        s.packed(token_keys=("logp",))
