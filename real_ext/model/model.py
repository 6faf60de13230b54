"""ReaLModel: a packed decoder (LLaMA, Qwen2, Mistral, GPT-2 families) holding
one rank's shard under a parallel layout, its parameters stored in one flat
buffer (the reallocation engine reads and writes these buffers; order in
shards.py).

    model = ReaLModel.from_pretrained(path)                  # one process
    logits = model(input_ids, cu_seqlens)                    # (T, vocab)
    values = ReaLModel.from_pretrained(path, head="value")(input_ids, cu_seqlens)  # (T,)

Under a layout with pp > 1, ``forward`` runs the pipeline (pipeline.py) and
returns the output on the last stage's ranks and None on the others.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from real_ext.model.config import ModelConfig
from real_ext.model.layers import Block, Linear, Norm, PackedInfo, forget_fused, linear, rope_cos_sin, rope_inv_freq
from real_ext.model.shared_prefix import SharedPrefix, plan_shared_prefix
from real_ext.model.logprob import CHUNK_ELEMENTS, fused_logprobs, next_token_targets
from real_ext.model.params import HEADS
from real_ext.model.shards import ModelShards
from real_ext.parallel.comm import copy_to_tp, gather_from_tp, reduce_from_tp
from real_ext.parallel.context import ParallelContext
from real_ext.parallel.layout import ParallelLayout

ROPE_TABLE_POSITIONS = 8192  # positions whose rope cos/sin a model keeps (beyond: computed per forward)


class _Embedding(nn.Module):
    def __init__(self, config: ModelConfig, local_vocab: int):
        super().__init__()
        self.embed_tokens = nn.Module()
        self.embed_tokens.weight = nn.Parameter(torch.empty(local_vocab, config.hidden_size))
        if config.position == "learned":
            self.embed_positions = nn.Module()
            self.embed_positions.weight = nn.Parameter(torch.empty(config.max_positions, config.hidden_size))


class ReaLModel(nn.Module):
    def __init__(self, config: ModelConfig, *, head: str = "lm", layout=None, dtype=torch.float32,
                 device="cpu"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r}: expected one of {HEADS}")
        _check_dtype(dtype, torch.device(device))
        self.config, self.head = config, head
        parallel = layout.layout if isinstance(layout, ParallelContext) else layout or ParallelLayout.single()
        if not isinstance(parallel, ParallelLayout):
            raise TypeError(f"layout must be None, a ParallelLayout or a ParallelContext, got {type(layout).__name__}")
        # Validated before any process group exists: tp vs heads, pp vs layers.
        self.shard_map = ModelShards(config, head, parallel)
        # tp ranks sharing one kv head when tp exceeds the kv heads (their kv grads are summed)
        self.kv_replication = parallel.tp // config.num_kv_heads if parallel.tp > config.num_kv_heads else 1
        self.ctx = _context(layout, self.kv_replication)
        self.kv_group = self.ctx.kv_group
        if not self.ctx.is_member:
            raise ValueError(f"rank {self.ctx.rank} is not in the layout's mesh {list(self.ctx.layout.mesh)}")
        self.shards = self.shard_map.shards(self.ctx.rank)
        self.units = self.shard_map.stage_units(self.ctx.coord.pp)
        self.activation_checkpointing = False
        self._build_modules()
        self._bind_flat_storage(dtype, torch.device(device))
        # Computed on the host (same values everywhere), kept on the device: no copy per forward.
        self._inv_freq = rope_inv_freq(config).to(device) if config.position == "rope" else None
        # (cos, sin) of positions 0..n-1, made on first use (a decode step
        # would otherwise compute its few rows at ~50 us), or None.
        self._rope_table = None

    # ------------------------------------------------------------ structure

    def _build_modules(self):
        c, tp = self.config, self.ctx.tp
        by_name = {s.spec.name: s for s in self.shards}
        local = lambda name: by_name[name].local_shape  # noqa: E731
        last = c.num_layers + 1
        self.model = nn.Module()
        if 0 in self.units:
            emb = _Embedding(c, local("model.embed_tokens.weight")[0])
            self.model.embed_tokens = emb.embed_tokens
            if c.position == "learned":
                self.model.embed_positions = emb.embed_positions
        self.model.layers = nn.ModuleDict()
        kv_rows = local("model.layers.{}.self_attn.k_proj.weight".format(self._first_block()))[0]
        for i in self._blocks():
            self.model.layers[str(i)] = Block(c, c.num_heads // tp, kv_rows // c.head_dim, c.intermediate_size // tp,
                                              layer=i)
        if last in self.units:
            self.model.norm = Norm(c)
            if self.head == "value":
                self.value_head = Linear(1, c.hidden_size, bias=False)
            elif "lm_head.weight" in by_name:
                self.lm_head = Linear(local("lm_head.weight")[0], c.hidden_size, bias=False)
        names = {n for n, _ in self.named_parameters()}
        expected = set(by_name)
        if names != expected:  # the module tree and the shard list must describe the same parameters
            raise AssertionError(f"parameter mismatch: {sorted(names ^ expected)}")

    def _blocks(self) -> range:
        return range(max(self.units.start, 1) - 1, min(self.units.stop, self.config.num_layers + 1) - 1)

    def _first_block(self) -> int:
        return self._blocks().start

    def _bind_flat_storage(self, dtype: torch.dtype, device: torch.device):
        """Allocate the flat buffer and make every parameter a view into it."""
        total = self.shard_map.numel(self.ctx.rank)
        self.flat = torch.zeros(total, dtype=dtype, device=device)
        self._point_params()

    def _point_params(self):
        forget_fused(self)
        params = dict(self.named_parameters())
        for s in self.shards:
            params[s.spec.name].data = s.view(self.flat)

    def release_storage(self) -> torch.Tensor:
        """Detach the flat buffer (to offload it); parameters are empty until adopt_storage."""
        flat = self.flat
        self.flat = torch.empty(0, dtype=flat.dtype, device=flat.device)
        forget_fused(self)
        for p in self.parameters():
            p.data = self.flat
        return flat

    def adopt_storage(self, flat: torch.Tensor) -> None:
        """Take a flat buffer (e.g. reloaded from host memory) as this shard's parameters."""
        if flat.numel() != self.shard_map.numel(self.ctx.rank):
            raise ValueError(f"flat buffer has {flat.numel()} elements, this shard needs "
                             f"{self.shard_map.numel(self.ctx.rank)}")
        self.flat = flat
        self._point_params()

    @property
    def tp_group(self):
        return self.ctx.tp_group

    @property
    def is_first_stage(self) -> bool:
        return 0 in self.units

    @property
    def is_last_stage(self) -> bool:
        return self.config.num_layers + 1 in self.units

    def output_weight(self) -> torch.Tensor:
        """The LM head's local weight (the embedding when tied on one stage)."""
        head = getattr(self, "lm_head", None)
        return head.weight if head is not None else self.model.embed_tokens.weight

    # ------------------------------------------------------------ forward

    def packed_info(self, cu_seqlens: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
                    shared: SharedPrefix | None = None) -> PackedInfo:
        info = PackedInfo(cu_seqlens, positions, cache, None if shared is None else shared.max_len_q, shared)
        longest = info.max_len if positions is None else (int(positions.max()) + 1 if positions.numel() else 0)
        if longest > self.config.max_positions and self.config.position == "learned":
            raise ValueError(f"a sequence of {longest} tokens exceeds max_position_embeddings="
                             f"{self.config.max_positions}")
        if self.config.sliding_window is not None and longest > self.config.sliding_window:
            raise ValueError(f"a sequence of {longest} tokens exceeds sliding_window="
                             f"{self.config.sliding_window}; sliding-window attention is not implemented")
        return self._with_rope(info, longest)

    def decode_info(self, positions: torch.Tensor, cache) -> PackedInfo:
        """PackedInfo of a decode step (one new token per sequence at
        `positions`) without reading anything back to the host, so that it can
        be captured in a CUDA graph; generate() checks the positions fit (its
        request check: the context; check_window: a sliding window)."""
        cu = torch.arange(positions.shape[0] + 1, dtype=torch.int32, device=positions.device)
        return self._with_rope(PackedInfo(cu, positions, cache, max_len=1), self.config.max_positions)

    def _with_rope(self, info: PackedInfo, longest: int) -> PackedInfo:
        """info.rope for its positions, all below `longest`: rows of the table
        when it covers them (the same values: rope_cos_sin row by row), else
        computed for these positions."""
        if self._inv_freq is None:
            return info
        if longest <= ROPE_TABLE_POSITIONS:
            n = max(longest, self.config.max_positions if self.config.max_positions <= ROPE_TABLE_POSITIONS else 0)
            if self._rope_table is None or len(self._rope_table[0]) < n or self._rope_table[0].dtype != self.flat.dtype:
                self._rope_table = rope_cos_sin(self._inv_freq, torch.arange(n, device=self._inv_freq.device),
                                                self.flat.dtype)
            cos, sin = self._rope_table
            info.rope = (cos.index_select(0, info.positions), sin.index_select(0, info.positions))
        else:
            info.rope = rope_cos_sin(self._inv_freq, info.positions, self.flat.dtype)
        return info

    def embed(self, input_ids: torch.Tensor, info: PackedInfo) -> torch.Tensor:
        """Vocab-parallel token embedding (+ learned positions): (T, hidden)."""
        weight = self.model.embed_tokens.weight
        if self.tp_group is None:
            x = F.embedding(input_ids, weight)
        else:
            start = self.shards[0].rows[0]
            local = input_ids - start
            outside = (local < 0) | (local >= weight.shape[0])
            x = F.embedding(local.masked_fill(outside, 0), weight).masked_fill(outside[:, None], 0.0)
            x = reduce_from_tp(x, self.tp_group)
        if self.config.position == "learned":
            x = x + F.embedding(info.positions, self.model.embed_positions.weight)
        return x

    def run_blocks(self, x: torch.Tensor, info: PackedInfo) -> torch.Tensor:
        """This stage's blocks; with info.last_only (on the last stage) the
        output has one row per sequence, its last token's."""
        blocks = list(self.model.layers.values())
        for i, block in enumerate(blocks):
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, info, self.tp_group, use_reentrant=False)
            elif info.last_only and self.is_last_stage and i == len(blocks) - 1:
                x = block(x, info, self.tp_group, info.cu_seqlens[1:].long() - 1)
            else:
                x = block(x, info, self.tp_group)
        return x

    def final_hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def head_output(self, h: torch.Tensor) -> torch.Tensor:
        """Values (T,) or full logits (T, vocab) from final hidden states."""
        if self.head == "value":
            return F.linear(h, self.value_head.weight).squeeze(-1)
        logits = linear(copy_to_tp(h, self.tp_group), self.output_weight())
        return gather_from_tp(logits, self.tp_group)[:, :self.config.vocab_size]

    def token_logprobs(self, h: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0) -> torch.Tensor:
        """log p(targets[t] | tokens <= t) (float32, (T,)) from final hidden
        states, under softmax(logits / temperature) truncated to top-k / top-p
        and renormalised exactly as generation samples (-inf for a target
        outside the kept set). Without truncation this is fused with the
        (vocab-parallel) head and chunked (logprob.py); with it, the logits of
        a chunk of tokens are gathered over tp and truncated."""
        if self.head != "lm":
            raise ValueError("token_logprobs needs an LM head; this model has a value head")
        weight = self.output_weight()
        if top_k == 0 and top_p >= 1.0:
            return fused_logprobs(copy_to_tp(h, self.tp_group), weight, targets,
                                  vocab_start=self.ctx.coord.tp * weight.shape[0],
                                  vocab_size=self.config.vocab_size, temperature=temperature,
                                  tp_group=self.tp_group)
        from real_ext.ref.sampling import truncated_log_softmax
        rows = max(1, CHUNK_ELEMENTS // self.config.vocab_size)
        out = []
        for a in range(0, h.shape[0], rows):
            logits = self.head_output(h[a:a + rows])
            logp = truncated_log_softmax(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            out.append(logp.gather(1, targets[a:a + rows, None]).squeeze(1))
        return torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)

    def logprobs(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, n_microbatches: int = 1):
        """Log-probability of every next token within its sequence (T,), 0 at
        each sequence's last position; None on non-last pipeline stages.
        temperature / top_k / top_p as generation uses them (token_logprobs)."""
        _check_batch(input_ids, cu_seqlens)
        hidden = self.hidden_states(input_ids, cu_seqlens, n_microbatches)
        if hidden is None:
            return None
        targets, valid = next_token_targets(input_ids, cu_seqlens)
        logp = self.token_logprobs(hidden, targets, temperature, top_k, top_p)
        return torch.where(valid, logp, torch.zeros_like(logp))

    def hidden_states(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, n_microbatches: int = 1):
        """Final hidden states (T, hidden) on the last stage, None elsewhere."""
        if self.ctx.pp > 1:
            from real_ext.model.pipeline import pipeline_forward
            return pipeline_forward(self, input_ids, cu_seqlens, n_microbatches)
        return self.forward_packed(input_ids, cu_seqlens)

    def forward_packed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Final hidden states (T, hidden) of a packed batch through a model
        on one pipeline stage. Adjacent sequences that start with the same
        tokens (the samples of a prompt) run those tokens once
        (shared_prefix.py) when that removes enough of the work."""
        shared = plan_shared_prefix(input_ids, cu_seqlens)
        if shared is None:
            return self.forward_stage(input_ids, self.packed_info(cu_seqlens))
        info = self.packed_info(shared.cu_seqlens_q, shared.positions, shared=shared)
        return self.forward_stage(shared.input_ids, info).index_select(0, shared.gather)

    def forward_stage(self, x_or_ids: torch.Tensor, info: PackedInfo) -> torch.Tensor:
        """This stage's part: token ids or hidden states in, hidden states (or the
        final hidden states on the last stage) out."""
        x = self.embed(x_or_ids, info) if self.is_first_stage else x_or_ids
        x = self.run_blocks(x, info)
        return self.final_hidden(x) if self.is_last_stage else x

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, *, n_microbatches: int = 1):
        """Logits (T, vocab) or values (T,) for a packed batch; None on non-last stages."""
        _check_batch(input_ids, cu_seqlens)
        hidden = self.hidden_states(input_ids, cu_seqlens, n_microbatches)
        return None if hidden is None else self.head_output(hidden)

    # ------------------------------------------------------------ construction

    @staticmethod
    def from_config(config: ModelConfig, *, head: str = "lm", layout=None, dtype=torch.float32, device="cpu",
                    seed: int = 0, init_std: float = 0.02) -> "ReaLModel":
        """A freshly initialised model; the same seed gives the same full
        parameters under every layout (each shard is cut from the full tensor)."""
        from real_ext.model.checkpoint import init_params
        model = ReaLModel(config, head=head, layout=layout, dtype=dtype, device=device)
        init_params(model, seed, init_std)
        return model

    @staticmethod
    def from_pretrained(path: str, *, dtype=torch.float32, head: str = "lm", layout=None,
                        device="cpu") -> "ReaLModel":
        """Load a Hugging Face checkpoint folder, reading only this rank's slices."""
        from real_ext.model.checkpoint import load_params
        config = ModelConfig.from_pretrained(path)
        model = ReaLModel(config, head=head, layout=layout, dtype=dtype, device=device)
        load_params(model, path)
        model.source_path = path
        return model

    def save_pretrained(self, path: str, *, max_shard_bytes: int = 5 * 1024 ** 3) -> None:
        """Write a Hugging Face checkpoint (collective over the mesh; rank 0 writes)."""
        from real_ext.model.checkpoint import save_pretrained
        save_pretrained(self, path, max_shard_bytes=max_shard_bytes)


def _context(layout, kv_replication: int) -> ParallelContext:
    if layout is None:
        return ParallelContext.single()
    if isinstance(layout, ParallelContext):
        if layout.kv_replication != kv_replication:
            raise ValueError(f"this model needs a ParallelContext created with kv_replication={kv_replication} "
                             f"(tp / num_key_value_heads), got {layout.kv_replication}")
        return layout
    return ParallelContext.create(layout, kv_replication)


def _check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    allowed = (torch.float32, torch.bfloat16) if device.type == "cpu" else (torch.float32, torch.bfloat16,
                                                                           torch.float16)
    if dtype not in allowed:
        raise ValueError(f"dtype {dtype} cannot run on {device.type}; use one of "
                         f"{', '.join(str(d).replace('torch.', '') for d in allowed)}")


def _check_batch(input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if input_ids.dim() != 1 or input_ids.dtype != torch.int64:
        raise ValueError(f"input_ids must be int64 of shape (T,), got {input_ids.dtype} {tuple(input_ids.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must be int32 of shape (B+1,), got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
    if int(cu_seqlens[-1]) != input_ids.shape[0]:
        raise ValueError(f"cu_seqlens[-1]={int(cu_seqlens[-1])} must equal len(input_ids)={input_ids.shape[0]}")
