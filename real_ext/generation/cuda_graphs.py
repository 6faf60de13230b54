"""Decode steps replayed from CUDA graphs.

A decode step of a small model is hundreds of tiny kernels; launching them one
by one from Python costs more than running them. So the step (embedding,
every block with its KV-cache append and decode attention, the LM head) is
captured once per batch-size bucket and replayed. Sampling stays outside the
graph (it is one op, and its uniforms are keyed on the host).

- Buckets: a step with B running samples replays a captured bucket of B to
  4B rows, else captures the smallest bucket >= B; the extra rows decode
  token 0 at position 0 into a scratch block of the cache (their logits are
  dropped), so every row of the graph is valid.
- Inputs: one int64 device buffer [tokens | positions | slots | seq_lens |
  block table (bucket x width)], filled from pinned host memory by one copy
  per step. The block table width is fixed for the whole generate() call:
  enough blocks for the longest prompt plus max_new_tokens.
- The graphs hold the addresses of the cache pools; when the pools grow
  (PagedKVCache reallocates and bumps its generation) the graphs are dropped
  and recaptured at their next use.
- All buckets share one memory pool (a new one after the pools grow), so
  their activations take the space of the largest one.

Used for single-stage models without tensor parallelism on CUDA
(GenerationConfig.cuda_graphs); tensor-parallel and pipelined generation
launch their kernels eagerly. Off CUDA the same padded buckets run eagerly
(no capture), which is how the CPU tests check the bucket bookkeeping.
"""
from __future__ import annotations

import numpy as np
import torch

from real_ext.generation.kv_cache import CacheStep, PagedKVCache

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512)
SCRATCH = -(1 << 40)  # the cache sequence id of the padding rows' block


def usable(model, config) -> bool:
    """Whether generate() replays graphs: asked for, on CUDA, one stage, no tensor parallelism."""
    return config.cuda_graphs and model.flat.device.type == "cuda" and model.ctx.tp == 1 and model.ctx.pp == 1


def layout(buf, bucket: int, width: int):
    """The step inputs' views of an input buffer (numpy or torch) laid out for
    `bucket` rows: tokens, positions, slots, seq_lens (bucket,) and the block
    table (bucket, width)."""
    tokens, positions, slots, lens = (buf[i * bucket:(i + 1) * bucket] for i in range(4))
    return tokens, positions, slots, lens, buf[4 * bucket:bucket * (4 + width)].reshape(bucket, width)


class DecodeGraphs:
    """Logits of one decode step for the running samples, from a replayed graph."""

    def __init__(self, model, cache: PagedKVCache, longest: int):
        self.model, self.cache = model, cache
        self.width = -(-longest // cache.block_size)          # block table columns
        cache.allocate(SCRATCH, 1)
        self.scratch_block = cache.blocks[SCRATCH][0]
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.generation = cache.generation
        self.capture = model.flat.device.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        size = BUCKETS[-1] * (4 + self.width)
        self.host = torch.empty(size, dtype=torch.int64, pin_memory=self.capture)
        self.device_inputs = torch.zeros(size, dtype=torch.int64, device=model.flat.device)
        # sample index -> (blocks already written, its block table row)
        self.tables: dict[int, tuple[int, np.ndarray]] = {}

    @staticmethod
    def fits(batch: int) -> bool:
        return batch <= BUCKETS[-1]

    def logits(self, running) -> torch.Tensor:
        """(B, vocab) logits for the running samples (a view into the graph's
        output: consume it before the next step). Takes a cache slot per sample."""
        n = len(running)
        bucket = self._bucket(n)
        inputs = self._fill(running, bucket)  # may grow the cache pools
        if not self.capture:
            self.device_inputs[:inputs.numel()].copy_(inputs)
            return self._step(bucket)[:n]
        if self.cache.generation != self.generation:  # the pools moved: old graphs point at freed memory
            self.graphs.clear()
            self.generation = self.cache.generation
            # A fresh memory pool: the old one lives on while a returned logits view does,
            # and torch cannot capture into a pool whose graphs are gone but whose memory is not.
            self.pool = torch.cuda.graph_pool_handle()
        if bucket not in self.graphs:
            self.graphs[bucket] = self._capture(bucket)
        self.device_inputs[:inputs.numel()].copy_(inputs, non_blocking=True)
        graph, out = self.graphs[bucket]
        graph.replay()
        return out[:n]

    def _bucket(self, n: int) -> int:
        """The bucket to replay for n rows: a captured one up to 4x larger if
        there is one (a decode step of a few rows is bound by reading the
        weights, so padding rows cost little, while a capture costs an eager
        step and the recording), else the smallest that fits."""
        fit = next(b for b in BUCKETS if b >= n)
        captured = [b for b in self.graphs if fit <= b <= 4 * fit]
        return min(captured) if captured else fit

    def _fill(self, running, bucket: int) -> torch.Tensor:
        """The step's inputs in pinned memory, padded to the bucket."""
        cache, width = self.cache, self.width
        buf = self.host[:bucket * (4 + width)].numpy()
        tokens, positions, slots, lens, table = layout(buf, bucket, width)
        for i, s in enumerate(running):
            slots[i] = cache.allocate(s.index, 1)[0]
            blocks = cache.blocks[s.index]
            known, row = self.tables.get(s.index, (0, None))
            if row is None:
                row = np.zeros(width, dtype=np.int64)
            if known < len(blocks):
                row[known:len(blocks)] = blocks[known:]
                self.tables[s.index] = (len(blocks), row)
            tokens[i], positions[i] = s.tokens[-1], s.prompt_len + len(s.tokens) - 1
            lens[i] = cache.lengths[s.index]
            table[i] = row
        self._pad(buf, len(running), bucket)
        return self.host[:bucket * (4 + width)]

    def _pad(self, buf: np.ndarray, first: int, bucket: int) -> None:
        """Rows first..bucket-1: token 0 at position 0 into the scratch block."""
        tokens, positions, slots, lens, table = layout(buf, bucket, self.width)
        tokens[first:], positions[first:], lens[first:] = 0, 0, 1
        slots[first:] = self.scratch_block * self.cache.block_size
        table[first:] = self.scratch_block

    def _step(self, bucket: int) -> torch.Tensor:
        """The decode step over the device input buffer laid out for `bucket`."""
        tokens, positions, slots, lens, table = layout(self.device_inputs, bucket, self.width)
        step = CacheStep(self.cache, slots, decode=True, block_tables=table.to(torch.int32),
                         seq_lens=lens.to(torch.int32))
        return self.model.head_output(self.model.forward_stage(tokens, self.model.decode_info(positions, step)))

    def _capture(self, bucket: int):
        # Inputs for the warm-up and capture: every row a padding row (valid
        # ids); the host buffer already holds this step's real inputs.
        padding = np.empty(bucket * (4 + self.width), dtype=np.int64)
        self._pad(padding, 0, bucket)
        self.device_inputs[:padding.size].copy_(torch.from_numpy(padding))
        side = torch.cuda.Stream(device=self.model.flat.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture wants
            self._step(bucket)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a worker's other threads may use CUDA while this one captures.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = self._step(bucket)
        return graph, out

    def forget(self, index: int) -> None:
        self.tables.pop(index, None)
