"""Paged KV cache. Every layer this rank holds has a pool of blocks of
``block_size`` tokens, (num_blocks, block_size, heads_kv, head_dim) for keys and
the same for values; a sequence owns a list of blocks, appended to one at a
time as it grows and returned to the free list when it finishes. Memory thus
follows the tokens actually live (up to one partial block per sequence); when
the free list runs dry the pools double, copying the live blocks over.

The samples of one prompt share its full blocks (a block is counted by the
sequences holding it and freed when the last lets go); only the prompt's last,
partly filled block is copied per sample, since that is where each sample
writes its next tokens. A shared block is never written again: a sequence
writes only past its cached length, in its own last block or a fresh one.

Every rank that runs the same sequence of allocate/free calls gets the same
slots, so pipeline stages and tensor-parallel ranks agree without talking.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class CacheStep:
    """What one forward pass needs from the cache (see PackedInfo)."""
    cache: "PagedKVCache"
    slots: torch.Tensor                       # (T,) int64: where each new token's k/v go
    decode: bool                              # one token per sequence, attending over the cache
    block_tables: torch.Tensor | None = None  # (B, max_blocks) int32, decode only
    seq_lens: torch.Tensor | None = None      # (B,) int32 cached tokens incl. the new one, decode only
    # The engine builds the ids from this cache's bookkeeping: on CUDA the ops
    # need not copy them to the host to check them (CPU runs check them always).
    check_ids: bool = False

    @property
    def block_size(self) -> int:
        return self.cache.block_size

    def pools(self, layer: int):
        return self.cache.k[layer], self.cache.v[layer]


class PagedKVCache:
    def __init__(self, layers, heads_kv: int, head_dim: int, dtype, device, *, block_size: int = 16,
                 initial_blocks: int = 64):
        self.layers, self.block_size = list(layers), block_size
        self.shape = (heads_kv, head_dim)
        self.dtype, self.device = dtype, torch.device(device)
        self.num_blocks = 0
        self.generation = 0  # bumped when the pools are reallocated (CUDA graphs hold their addresses)
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.free: list[int] = []
        self.holders: list[int] = []             # block id -> sequences holding it
        self.blocks: dict[int, list[int]] = {}   # sequence id -> its blocks
        self.lengths: dict[int, int] = {}        # sequence id -> cached tokens
        self._grow(max(1, initial_blocks))

    def _grow(self, num_blocks: int) -> None:
        old = self.num_blocks
        for layer in self.layers:
            for pools in (self.k, self.v):
                new = torch.empty(num_blocks * self.block_size, *self.shape, dtype=self.dtype, device=self.device)
                if old:
                    new[:old * self.block_size] = pools[layer]
                pools[layer] = new
        # Lowest block ids first, so allocation order is the same on every rank.
        self.free = list(range(num_blocks - 1, old - 1, -1)) + self.free
        self.holders += [0] * (num_blocks - old)
        self.num_blocks = num_blocks
        self.generation += 1

    def allocate(self, seq: int, n_tokens: int) -> list[int]:
        """Slots for the next n_tokens of sequence seq (registering it if new)."""
        blocks = self.blocks.setdefault(seq, [])
        length = self.lengths.get(seq, 0)
        slots = []
        for pos in range(length, length + n_tokens):
            if pos // self.block_size == len(blocks):
                blocks.append(self._take())
            slots.append(blocks[pos // self.block_size] * self.block_size + pos % self.block_size)
        self.lengths[seq] = length + n_tokens
        return slots

    def _take(self) -> int:
        if not self.free:
            self._grow(2 * self.num_blocks)
        block = self.free.pop()
        self.holders[block] = 1
        return block

    def share_sequence(self, src: int, dst: int) -> None:
        """dst starts with src's cached tokens (several samples of one prompt):
        src's full blocks are shared, its partly filled last block copied."""
        n, blocks = self.lengths[src], self.blocks[src]
        full = n // self.block_size
        for b in blocks[:full]:
            self.holders[b] += 1
        own = blocks[:full]
        if n % self.block_size:
            block = self._take()
            src_rows = slice(blocks[full] * self.block_size, blocks[full] * self.block_size + n % self.block_size)
            dst_rows = slice(block * self.block_size, block * self.block_size + n % self.block_size)
            for layer in self.layers:
                for pools in (self.k, self.v):
                    pools[layer][dst_rows] = pools[layer][src_rows]
            own = own + [block]
        self.blocks[dst], self.lengths[dst] = own, n

    def release(self, seq: int) -> None:
        for b in reversed(self.blocks.pop(seq, [])):
            self.holders[b] -= 1
            if self.holders[b] == 0:
                self.free.append(b)
        self.lengths.pop(seq, None)

    def block_table(self, seqs: list[int]) -> torch.Tensor:
        """(len(seqs), most blocks) int32, zero-padded; built as one list (a
        tensor per sequence cost ~5% of a small model's decode step)."""
        width = max(len(self.blocks[s]) for s in seqs)
        rows = [self.blocks[s] + [0] * (width - len(self.blocks[s])) for s in seqs]
        return torch.tensor(rows, dtype=torch.int32).to(self.device)

    def seq_lens(self, seqs: list[int]) -> torch.Tensor:
        return torch.tensor([self.lengths[s] for s in seqs], dtype=torch.int32, device=self.device)

    @property
    def live_tokens(self) -> int:
        """Cached tokens over all sequences (a shared block's tokens count for each holder)."""
        return sum(self.lengths.values())

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self.free)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size
