"""The paged KV cache's bookkeeping: slots, reuse of freed blocks, growth."""
import torch

from real_ext.generation.kv_cache import PagedKVCache


def test_slots_blocks_release_and_growth():
    cache = PagedKVCache([0, 1], heads_kv=2, head_dim=4, dtype=torch.float32, device="cpu", block_size=4,
                         initial_blocks=2)
    a = cache.allocate(10, 6)          # blocks 0 and 1
    assert a == [0, 1, 2, 3, 4, 5]
    cache.k[0][torch.tensor(a)] = torch.arange(6.0)[:, None, None].expand(6, 2, 4)
    b = cache.allocate(11, 3)          # no block free: the pools double, contents kept
    assert cache.num_blocks == 4 and b == [8, 9, 10]
    assert torch.equal(cache.k[0][torch.tensor(a)][:, 0, 0], torch.arange(6.0))
    assert cache.allocate(10, 3) == [6, 7, 12]  # fills its partial block, then a new one
    assert cache.block_table([10, 11]).tolist() == [[0, 1, 3], [2, 0, 0]]
    assert cache.seq_lens([10, 11]).tolist() == [9, 3]
    cache.release(10)
    assert cache.live_tokens == 3
    assert cache.allocate(12, 5)[:4] == [0, 1, 2, 3]  # freed blocks are reused
    cache.copy_sequence(11, 13)
    assert cache.lengths[13] == 3
