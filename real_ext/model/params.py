"""Parameter specs of a decoder: canonical names, full shapes, how tensor
parallelism splits each one, which pipeline unit owns it.

Canonical names follow LLaMA's Hugging Face names for every family
(``model.layers.3.self_attn.q_proj.weight``); GPT-2 checkpoints are converted to
them on load and back on save (see checkpoint.py). Weights have nn.Linear's
shape, (out_features, in_features); row-parallel ones are stored transposed in
the flat buffer (``ParamSpec.transposed``, see shards.py).

Pipeline units: 0 is the embedding (token and learned positions), 1..L the
transformer blocks, L+1 the final norm and the head. Stages own contiguous unit
ranges, balanced by parameter count.
"""
from __future__ import annotations

import dataclasses
import math

from real_ext.model.config import ModelConfig

# How tensor parallelism splits a parameter (Megatron's scheme).
REPLICATED = "rep"     # every tp rank holds all of it
COLUMN = "col"         # dim 0 (output features) split evenly
KV_COLUMN = "kv_col"   # dim 0 split by kv heads; heads replicated when tp > num_kv_heads
ROW = "row"            # dim 1 (input features) split evenly
VOCAB = "vocab"        # dim 0 split over the vocabulary padded to a multiple of tp

HEADS = ("lm", "value")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    split: str
    unit: int                    # pipeline unit, see module docstring
    decay: bool                  # AdamW weight decay applies (matrices and embeddings)
    tied_to: str | None = None   # a copy of another parameter (tied lm_head on the last stage)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def transposed(self) -> bool:
        """Stored as (in, out) in the flat buffer: a row-parallel weight (shards.py)."""
        return self.split == ROW


def _layer_specs(c: ModelConfig, i: int) -> list[ParamSpec]:
    p, u, h = f"model.layers.{i}.", i + 1, c.hidden_size
    specs = []

    def add(name, shape, split, decay):
        specs.append(ParamSpec(p + name, tuple(shape), split, u, decay))

    def norm(name):
        add(f"{name}.weight", (h,), REPLICATED, False)
        if c.norm == "layer":
            add(f"{name}.bias", (h,), REPLICATED, False)

    norm("input_layernorm")
    # q/k/v weights back to back (then their biases), likewise gate/up: inference
    # runs each group as one matrix product over a view of the flat buffer.
    qkv = (("q_proj", c.q_size, COLUMN), ("k_proj", c.kv_size, KV_COLUMN), ("v_proj", c.kv_size, KV_COLUMN))
    for proj, out, split in qkv:
        add(f"self_attn.{proj}.weight", (out, h), split, True)
    if c.qkv_bias:
        for proj, out, split in qkv:
            add(f"self_attn.{proj}.bias", (out,), split, False)
    add("self_attn.o_proj.weight", (h, c.q_size), ROW, True)
    if c.o_bias:
        add("self_attn.o_proj.bias", (h,), REPLICATED, False)
    norm("post_attention_layernorm")
    mlp_in = ("gate_proj", "up_proj") if c.gated_mlp else ("up_proj",)
    for proj in mlp_in:
        add(f"mlp.{proj}.weight", (c.intermediate_size, h), COLUMN, True)
    if c.mlp_bias:
        for proj in mlp_in:
            add(f"mlp.{proj}.bias", (c.intermediate_size,), COLUMN, False)
    add("mlp.down_proj.weight", (h, c.intermediate_size), ROW, True)
    if c.mlp_bias:
        add("mlp.down_proj.bias", (h,), REPLICATED, False)
    return specs


def param_specs(c: ModelConfig, head: str = "lm", pp: int = 1) -> list[ParamSpec]:
    """Every parameter of the model in canonical order (the flat-buffer order).

    With tied embeddings the LM head reuses the embedding; when the embedding
    and the head sit on different pipeline stages (pp > 1) the last stage holds
    a copy, ``lm_head.weight`` with ``tied_to`` set, kept equal by the trainer.
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r}: expected one of {HEADS}")
    h, last = c.hidden_size, c.num_layers + 1
    specs = [ParamSpec("model.embed_tokens.weight", (c.vocab_size, h), VOCAB, 0, True)]
    if c.position == "learned":
        specs.append(ParamSpec("model.embed_positions.weight", (c.max_positions, h), REPLICATED, 0, True))
    for i in range(c.num_layers):
        specs += _layer_specs(c, i)
    specs.append(ParamSpec("model.norm.weight", (h,), REPLICATED, last, False))
    if c.norm == "layer":
        specs.append(ParamSpec("model.norm.bias", (h,), REPLICATED, last, False))
    if head == "value":
        specs.append(ParamSpec("value_head.weight", (1, h), REPLICATED, last, True))
    elif not c.tie_word_embeddings:
        specs.append(ParamSpec("lm_head.weight", (c.vocab_size, h), VOCAB, last, True))
    elif pp > 1:
        specs.append(ParamSpec("lm_head.weight", (c.vocab_size, h), VOCAB, last, True,
                               tied_to="model.embed_tokens.weight"))
    return specs


def stage_units(c: ModelConfig, pp: int, head: str = "lm") -> list[range]:
    """Contiguous unit ranges of the pp stages, minimizing the largest stage's
    parameter count; every stage gets at least one transformer block."""
    if pp > c.num_layers:
        raise ValueError(f"pp={pp} exceeds the number of layers ({c.num_layers}): every pipeline stage needs "
                         f"at least one transformer block")
    weight = [0] * (c.num_layers + 2)
    for s in param_specs(c, head, pp=1):
        weight[s.unit] += s.numel
    if pp == 1:
        return [range(0, c.num_layers + 2)]
    # Binary search on the largest stage; greedy check with the block constraint.
    blocks = weight[1:-1]

    def cuts_for(limit):
        cuts, load, stage_blocks = [], weight[0], 0
        for i, w in enumerate(blocks):
            remaining_stages = pp - 1 - len(cuts)
            remaining_blocks = len(blocks) - i
            must_cut = stage_blocks > 0 and remaining_blocks == remaining_stages
            if stage_blocks > 0 and (load + w > limit or must_cut) and remaining_stages > 0:
                cuts.append(i)
                load, stage_blocks = 0, 0
            load += w
            stage_blocks += 1
            if load > limit:
                return None
        load += weight[-1]
        return cuts if len(cuts) == pp - 1 and load <= limit else None

    lo, hi = max(weight), sum(weight)
    while lo < hi:
        mid = (lo + hi) // 2
        if cuts_for(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    cuts = cuts_for(lo)
    bounds = [0] + [i + 1 for i in cuts] + [c.num_layers + 2]
    return [range(bounds[s], bounds[s + 1]) for s in range(pp)]
