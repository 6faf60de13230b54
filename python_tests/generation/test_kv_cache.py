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



def test_samples_share_the_prompts_full_blocks():
    """share_sequence against a plain per-sample copy of the prompt's tokens:
    full blocks shared (held until the last holder lets go), the partial last
    block copied, and every sample's own writes invisible to the others."""
    cache = PagedKVCache([0], heads_kv=1, head_dim=2, dtype=torch.float32, device="cpu", block_size=4,
                         initial_blocks=4)
    prompt = cache.allocate(-1, 6)                       # one full block and 2 tokens of the next
    cache.k[0][torch.tensor(prompt)] = torch.arange(1.0, 7.0)[:, None, None].expand(6, 1, 2)
    for s in range(3):
        cache.share_sequence(-1, s)
    cache.release(-1)
    assert cache.used_blocks == 1 + 3                    # the shared full block + one partial copy each
    for s in range(3):
        assert cache.blocks[s][0] == cache.blocks[0][0]
        assert len(set(cache.blocks[t][1] for t in range(3))) == 3
        slot = cache.allocate(s, 1)[0]                   # token 7 of sample s: into its own copy
        cache.k[0][slot] = 100.0 + s
    for s in range(3):
        slots = [cache.blocks[s][p // 4] * 4 + p % 4 for p in range(7)]
        assert cache.k[0][torch.tensor(slots)][:, 0, 0].tolist() == [1, 2, 3, 4, 5, 6, 100 + s]
    cache.release(0)
    cache.release(1)
    assert cache.used_blocks == 2                        # the full block lives while sample 2 holds it
    cache.release(2)
    assert cache.used_blocks == 0


def test_a_prompt_of_whole_blocks_is_shared_entirely():
    cache = PagedKVCache([0], heads_kv=1, head_dim=2, dtype=torch.float32, device="cpu", block_size=4,
                         initial_blocks=2)
    cache.allocate(-1, 8)
    for s in range(5):
        cache.share_sequence(-1, s)
    assert cache.used_blocks == 2 and cache.num_blocks == 2   # nothing copied, nothing grown
    assert cache.allocate(0, 1) == [cache.blocks[0][2] * 4]   # the next token opens a block of its own
