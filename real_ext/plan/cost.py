"""Cost model of the execution-plan search: how long a model function call
(MFC) takes on its mesh under a strategy (dp, tp, pp, micro-batches), how much
memory each of its workers needs, and what a message between two workers
costs. The simulator asks; nothing here runs a model.

CostModel holds what does not depend on the machine: the schedule real_ext
runs for each interface (generation's prefill and decode loop, inference's
pipelined forward, training's GPipe micro-batches, the data-parallel gradient
all-reduce and the optimizer step) and the bytes of every tensor real_ext
keeps. Subclasses give the machine's primitive times:

- AnalyticCost: FLOPs and bytes over a Hardware's peak numbers, for hardware
  that is not at hand (the GPU presets of hardware.py).
- ProfiledCost: per-layer times measured on this machine by profile.py,
  interpolated.

Meshes are taken to be aligned slices of the cluster (DESIGN.md "Parallel
layout"): a group of k consecutive ranks stays within a node when k <=
gpus_per_node. Coordinates are (pp, dp, tp) with tp fastest, so a tp group
spans tp ranks, a dp group tp*dp, and pipeline neighbours sit tp*dp apart.
Every data-parallel rank gets ceil(n_seqs / dp) sequences; all sequences run
to their full length (generation: gen_len tokens, no early stop).
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import math

from real_ext.generation.engine import PREFILL_TOKENS
from real_ext.model.config import ModelConfig
from real_ext.model.logprob import CHUNK_ELEMENTS
from real_ext.model.params import HEADS
from real_ext.model.shards import ModelShards, check_tp, padded_vocab
from real_ext.parallel.layout import ParallelLayout
from real_ext.runtime.spec import INTERFACES

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Trainer state per parameter beyond the parameter itself (train.py): float32
# gradient (4), Adam's two float32 moments (8), the float32 grad-norm mask (4);
# float32 master weights (4) when the parameters are not float32.
TRAIN_STATE_BYTES = 4 + 8 + 4
MASTER_BYTES = 4

# Bytes read + written per parameter by one optimizer update (Trainer):
# grad.zero_ 4, _clip 24 (grad * norm_mask 12, dot 4, rescale 8), torch's fused
# AdamW 28 (reads parameter, gradient and both moments, writes parameter and
# moments); with master weights, copying them back reads 4 and writes the
# parameter's bytes.
OPTIMIZER_BYTES = 56

# Bytes moved per float32 logit element by the fused log-prob head
# (logprob.py): forward: the matmul's output, .float(), / temperature, max,
# exp(logits - max), sum; the backward recomputes the chunk and forms its
# gradient. Counted from the code, unfused.
LOGIT_BYTES_FWD = 36
LOGIT_BYTES_BWD = 100

# Host-side cost of eager PyTorch: ~50 ops in a Block's forward (layers.py:
# two RMSNorms of 8 ops, rope 14, projections, attention, MLP), twice as many
# in its backward, ~40 per decode step outside the blocks (embedding, head,
# sampling), plus Python bookkeeping per running sequence (engine.py). GPU
# kernels run asynchronously, so a pass costs max(host, device).
OPS_PER_BLOCK = 50
OPS_PER_DECODE_STEP = 40
HOST_SECONDS_PER_SEQ = 2e-6     # an assumption: a few list operations per sample per step

# reward_fn runs a Python rule per sequence on the master-chosen workers.
REWARD_SECONDS_PER_SEQ = 2e-5   # the sort task's rule takes ~4 us here; packing and lists around it, a guess


@dataclasses.dataclass(frozen=True)
class Strategy:
    dp: int
    tp: int
    pp: int
    n_microbatches: int = 1

    def __post_init__(self):
        for f in ("dp", "tp", "pp", "n_microbatches"):
            if getattr(self, f) < 1:
                raise ValueError(f"Strategy {f}={getattr(self, f)} must be >= 1")


@dataclasses.dataclass(frozen=True)
class MFCWork:
    interface: str        # "generate" | "inference" | "train_step" | "reward_fn"
    n_seqs: int           # sequences in the whole call (over all dp ranks)
    prompt_len: int
    gen_len: int          # new tokens per sequence (generate); other interfaces: sequences of prompt_len + gen_len
    n_minibatches: int = 1

    def __post_init__(self):
        if self.interface not in INTERFACES:
            raise ValueError(f"MFCWork interface {self.interface!r} unknown; expected one of {INTERFACES}")
        if self.n_seqs < 1 or self.prompt_len < 0 or self.gen_len < 0 or self.n_minibatches < 1:
            raise ValueError(f"MFCWork needs n_seqs >= 1, prompt_len >= 0, gen_len >= 0, n_minibatches >= 1; "
                             f"got {self}")
        if self.interface == "generate" and (self.prompt_len < 1 or self.gen_len < 1):
            raise ValueError(f"a generate MFCWork needs prompt_len >= 1 and gen_len >= 1, got {self}")
        if self.interface in ("inference", "train_step") and self.seq_len < 1:
            raise ValueError(f"an {self.interface} MFCWork needs prompt_len + gen_len >= 1, got {self}")

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.gen_len


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    config: ModelConfig
    head: str = "lm"
    dtype: str = "bfloat16"
    trains: bool = False
    # Training keeps only each block's input and recomputes the rest in the
    # backward (ReaLModel.activation_checkpointing): a third more compute.
    activation_checkpointing: bool = False

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"ModelInfo head={self.head!r}: expected one of {HEADS}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"ModelInfo dtype={self.dtype!r}: expected one of {sorted(DTYPE_BYTES)}")

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


# ------------------------------------------------------------ model shape

@dataclasses.dataclass(frozen=True)
class Stage:
    """One pipeline stage as one of its workers sees it (tp rank 0)."""
    n_blocks: int
    first: bool          # holds the embedding
    last: bool           # holds the final norm and the head
    numel: int           # parameters on one worker (vocab padding and replicated kv heads included)
    largest: int         # elements of its largest parameter shard


@functools.lru_cache(maxsize=4096)
def stages(config: ModelConfig, head: str, tp: int, pp: int) -> tuple[Stage, ...]:
    """The stages real_ext's layout code makes (params.stage_units, shards.py);
    LayoutError / ValueError when tp or pp cannot split this model."""
    layout = ParallelLayout(tuple(range(tp * pp)), 1, tp, pp)
    shard_map = ModelShards(config, head, layout)
    out = []
    for p in range(pp):
        units = shard_map.stage_units(p)
        shards = shard_map.shards(layout.rank(p, 0, 0))
        blocks = len([u for u in units if 1 <= u <= config.num_layers])
        out.append(Stage(blocks, 0 in units, config.num_layers + 1 in units, sum(s.numel for s in shards),
                         max(s.numel for s in shards)))
    return tuple(out)


def local_dims(c: ModelConfig, tp: int) -> tuple[int, int, int, int]:
    """(q, kv, intermediate, vocab) widths on one tp rank: kv heads are
    replicated when tp exceeds them, the vocabulary padded to a multiple of tp."""
    check_tp(c, tp)
    kv_heads = c.num_kv_heads // tp if c.num_kv_heads >= tp else 1
    return c.q_size // tp, kv_heads * c.head_dim, c.intermediate_size // tp, padded_vocab(c.vocab_size, tp) // tp


def block_matmul_params(c: ModelConfig, tp: int = 1) -> int:
    """Weights of one block's matrix products on one tp rank (biases and norms
    add no matmul FLOPs)."""
    q, kv, inter, _ = local_dims(c, tp)
    h = c.hidden_size
    return h * (q + 2 * kv) + q * h + (3 if c.gated_mlp else 2) * h * inter


def block_flops(c: ModelConfig, tokens: float, seq_len: float, tp: int = 1) -> float:
    """Forward FLOPs of one block on one tp rank for ``tokens`` tokens packed in
    sequences of ``seq_len``: 2 per weight per token, plus causal attention:
    QK^T and AV over on average (seq_len + 1) / 2 keys, 2 FLOPs per
    multiply-add each: 2 * q * (seq_len + 1) per token."""
    q = local_dims(c, tp)[0]
    return 2 * tokens * block_matmul_params(c, tp) + 2 * tokens * q * (seq_len + 1)


def decode_block_flops(c: ModelConfig, batch: float, context: float, tp: int = 1) -> float:
    """Forward FLOPs of one block for one new token per sequence attending over
    ``context`` cached tokens."""
    q = local_dims(c, tp)[0]
    return 2 * batch * block_matmul_params(c, tp) + 4 * batch * q * context


def head_flops(c: ModelConfig, head: str, tokens: float, tp: int = 1) -> float:
    """Forward FLOPs of the head: logits over the (padded, vocab-parallel)
    vocabulary, or one value per token."""
    return 2 * tokens * c.hidden_size * (local_dims(c, tp)[3] if head == "lm" else 1)


def forward_flops(c: ModelConfig, head: str, tokens: float, seq_len: float) -> float:
    """Forward FLOPs of the whole model (tp = 1). Backward costs twice this."""
    return c.num_layers * block_flops(c, tokens, seq_len) + head_flops(c, head, tokens)


def activation_bytes_per_token(c: ModelConfig, tp: int, dtype_bytes: int) -> int:
    """Bytes autograd saves per token in one Block (layers.py), on one tp rank.
    A norm: its input and the output the next projection saves (norms are
    replicated over tp), plus a float32 statistic (RMSNorm: 1/rms; LayerNorm:
    mean and 1/std). Attention: rope'd q and k, v, the output and the float32
    log-sum-exp per head. Gated MLP: gate and up (the fused SwiGLU op's
    inputs; other activations also keep act(gate)) and the product fed to
    down_proj; plain MLP: up and act(up)."""
    q, kv, inter, _ = local_dims(c, tp)
    h, d = c.hidden_size, dtype_bytes
    norm = 2 * d * h + (4 if c.norm == "rms" else 8)
    attention = d * (2 * q + 2 * kv) + 4 * (c.num_heads // tp)
    fused_swiglu = c.gated_mlp and c.activation == "silu"
    mlp = d * inter * (3 if fused_swiglu else 4 if c.gated_mlp else 2)
    return 2 * norm + attention + mlp


def kv_bytes_per_token(c: ModelConfig, tp: int, dtype_bytes: int) -> int:
    """KV cache bytes of one token in one layer on one tp rank (keys + values)."""
    return 2 * local_dims(c, tp)[1] * dtype_bytes


def kv_cache_tokens(n_seqs: int, prompt_len: int, gen_len: int, block: int = 16) -> int:
    """Token slots of generation's paged cache at its final size (kv_cache.py,
    engine.new_cache) for n_seqs sequences of distinct prompts: it starts with
    the prompts' blocks plus one per sequence and doubles until every
    sequence's blocks fit. A sequence caches prompt_len + gen_len - 1 tokens
    (the last token is sampled, never fed). Samples of one prompt share its
    full blocks, so n_samples > 1 needs less; this bound is what the memory
    check assumes."""
    blocks = n_seqs * -(-prompt_len // block) + n_seqs
    need = n_seqs * -(-(prompt_len + gen_len - 1) // block)
    while blocks < need:
        blocks *= 2
    return blocks * block


def pipeline_bubble(pp: int, n_microbatches: int) -> float:
    """Idle fraction of a GPipe schedule: (pp - 1) / (n_microbatches + pp - 1)."""
    return (pp - 1) / (n_microbatches + pp - 1)


# ------------------------------------------------------------ the schedule

class CostModel:
    """MFC time and memory from machine primitives (subclasses implement the
    methods marked "machine")."""

    def __init__(self, hardware):
        self.hardware = hardware

    # -------------------------------------------------------- machine

    def layers_time(self, model: ModelInfo, n_layers: int, tokens: float, seq_len: float, tp: int,
                    backward: bool) -> float:
        """Compute of ``n_layers`` blocks over ``tokens`` tokens on one tp rank
        (forward, or forward + backward)."""
        raise NotImplementedError

    def head_time(self, model: ModelInfo, tokens: float, tp: int, backward: bool) -> float:
        """Embedding, final norm and head (log-probs for an LM head) over ``tokens`` tokens."""
        raise NotImplementedError

    def decode_time(self, model: ModelInfo, n_layers: int, batch: float, context: float, tp: int,
                    last: bool) -> float:
        """One decode step of one stage: its blocks for ``batch`` new tokens over
        ``context`` cached ones; on the last stage also the head and sampling."""
        raise NotImplementedError

    def optimizer_time(self, numel: int, dtype_bytes: int) -> float:
        """Gradient clipping and the AdamW update of ``numel`` parameters."""
        raise NotImplementedError

    def all_reduce_time(self, nbytes: float, n: int, span: int) -> float:
        """All-reduce of ``nbytes`` over ``n`` workers spread over ``span`` consecutive ranks."""
        raise NotImplementedError

    def p2p_time(self, nbytes: float, a: int, b: int) -> float:
        """One message of ``nbytes`` from worker a to worker b."""
        raise NotImplementedError

    def transfer_message_time(self, nbytes: float, n_keys: int, n_samples: int, a: int, b: int) -> float:
        """One worker pair's part of the runtime's data transfer
        (runtime/transfer.py): a pickled header (two messages) and one message
        per key from worker a to b, plus the host work around them."""
        hw = self.hardware
        return (self.p2p_time(nbytes, a, b) + (n_keys + 1) * self.p2p_time(0, a, b) + hw.transfer_fixed
                + n_samples * hw.transfer_per_sample)

    def build_time(self, model: ModelInfo, strategy: Strategy) -> float:
        """Building a model in a new layout (ReaLModel's constructor, on every
        destination worker at once), which a reallocation does first when no
        live copy of that layout exists."""
        blocks = max(st.n_blocks for st in stages(model.config, model.head, strategy.tp, strategy.pp))
        return self.hardware.build_fixed + blocks * self.hardware.build_per_block

    # -------------------------------------------------------- time

    def mfc_time(self, model: ModelInfo | None, work: MFCWork, strategy: Strategy) -> float:
        """Seconds from the start of the MFC on its mesh until every worker is done."""
        seqs = -(-work.n_seqs // strategy.dp)
        if work.interface == "reward_fn":
            return REWARD_SECONDS_PER_SEQ * seqs
        if model is None:
            raise ValueError(f"a {work.interface} MFC needs a model")
        if work.interface == "generate":
            if model.head != "lm":
                raise ValueError("a generate MFC needs a model with an LM head, got a value head")
            return self._generate_time(model, work, strategy, seqs)
        if work.interface == "inference":
            return self._inference_time(model, work, strategy, seqs)
        return self._train_time(model, work, strategy, seqs)

    def _tp_comm(self, model: ModelInfo, st: Stage, tokens: float, tp: int, backward: bool) -> float:
        """Megatron's all-reduces of (tokens, hidden) activations: 2 per block
        forward (attention and MLP outputs), 2 more backward, 1 for the
        vocab-parallel embedding; the vocab-parallel log-prob head reduces 3
        float32 vectors forward and its input gradient backward."""
        if tp == 1:
            return 0.0
        act = tokens * model.config.hidden_size * model.dtype_bytes
        n = st.n_blocks * (4 if backward else 2) + st.first
        t = n * self.all_reduce_time(act, tp, tp)
        if st.last and model.head == "lm":
            t += 3 * self.all_reduce_time(4 * tokens, tp, tp) + backward * self.all_reduce_time(act, tp, tp)
        return t

    def _hop(self, model: ModelInfo, tokens: float, strategy: Strategy) -> float:
        """Hidden states of ``tokens`` tokens to the next pipeline stage, tp * dp ranks on."""
        if strategy.pp == 1:
            return 0.0
        nbytes = tokens * model.config.hidden_size * model.dtype_bytes
        return self.p2p_time(nbytes, 0, min(strategy.tp * strategy.dp, self.hardware.n_workers - 1))

    def _stage_time(self, model, st: Stage, tokens, seq_len, tp, backward, with_head=True) -> float:
        t = self.layers_time(model, st.n_blocks, tokens, seq_len, tp, backward)
        if st.last and with_head:
            t += self.head_time(model, tokens, tp, backward)
        return t + self._tp_comm(model, st, tokens, tp, backward)

    def _inference_time(self, model, work, strategy, seqs) -> float:
        """Forward over this rank's sequences. With pp > 1 they flow through the
        stages in n_microbatches micro-batches (pipeline.pipeline_forward);
        with pp = 1 the batch runs in one pass. The head runs once over all
        tokens on the last stage (ReaLModel.logprobs / forward)."""
        tp, pp = strategy.tp, strategy.pp
        sts = stages(model.config, model.head, tp, pp)
        tokens = seqs * work.seq_len
        n_mb = min(strategy.n_microbatches, seqs) if pp > 1 else 1
        per_mb = max(self._stage_time(model, st, tokens / n_mb, work.seq_len, tp, False, with_head=False)
                     for st in sts)
        t = n_mb * per_mb / (1 - pipeline_bubble(pp, n_mb)) + (pp - 1) * self._hop(model, tokens / n_mb, strategy)
        return t + self.head_time(model, tokens, tp, False)

    def _train_time(self, model, work, strategy, seqs) -> float:
        """n_minibatches optimizer updates (algo/common.train_minibatches), each:
        micro-batches forward + backward (GPipe, pipeline.pipeline_train; one
        after another when pp = 1), the float32 gradient all-reduced over dp,
        three scalar all-reduces (loss weights, grad norm, statistics), the
        optimizer step on the largest stage's parameters."""
        dp, tp, pp = strategy.dp, strategy.tp, strategy.pp
        sts = stages(model.config, model.head, tp, pp)
        mb_seqs = seqs / work.n_minibatches
        n_mb = max(1, min(strategy.n_microbatches, int(mb_seqs)))
        tok = mb_seqs * work.seq_len / n_mb
        per_mb = max(self._stage_time(model, st, tok, work.seq_len, tp, True) for st in sts)
        if model.activation_checkpointing:   # forward + backward = 3 forwards; the recompute adds one
            per_mb *= 4 / 3
        pipe = n_mb * per_mb / (1 - pipeline_bubble(pp, n_mb)) + 2 * (pp - 1) * self._hop(model, tok, strategy)
        numel = max(st.numel for st in sts)
        grads = self.all_reduce_time(4 * numel, dp, tp * dp)
        scalars = 3 * self.all_reduce_time(8, dp * tp * pp, dp * tp * pp)
        update = pipe + grads + scalars + self.optimizer_time(numel, model.dtype_bytes)
        return work.n_minibatches * update

    def _generate_time(self, model, work, strategy, seqs) -> float:
        """Prefill, then gen_len - 1 decode steps (the first token comes from
        the prefill's logits). pp = 1: prompts prefilled in PREFILL_TOKENS
        chunks, every step runs the whole batch. pp > 1 (pipelined.py): one
        prompt per prefill micro-batch; decoding splits the batch into pp
        micro-batches cycling through the stages, so a step costs pp stage
        passes of batch / pp plus the tokens' trip back to the first stage.
        Decode steps are costed at the mean context (exact when a step's time
        is affine in the context)."""
        tp, pp = strategy.tp, strategy.pp
        sts = stages(model.config, model.head, tp, pp)
        p = work.prompt_len
        if pp == 1:
            chunk = max(p, min(PREFILL_TOKENS, seqs * p))
            n_chunks = -(-seqs * p // chunk)
            prefill = n_chunks * self._stage_time(model, sts[0], chunk, p, tp, False, with_head=False)
            prefill += self.head_time(model, seqs, tp, False)
        else:
            per_prompt = max(self._stage_time(model, st, p, p, tp, False, with_head=False) for st in sts)
            prefill = (seqs + pp - 1) * per_prompt + (pp - 1) * self._hop(model, p, strategy)
            prefill += self.head_time(model, seqs, tp, False)
        context = p + work.gen_len / 2
        batch = seqs / pp
        step = max(self._decode_stage(model, st, batch, context, tp) for st in sts)
        step *= pp
        if pp > 1:
            step += pp * self._hop(model, batch, strategy)
        return prefill + (work.gen_len - 1) * step

    def _decode_stage(self, model, st: Stage, batch, context, tp) -> float:
        t = self.decode_time(model, st.n_blocks, batch, context, tp, st.last)
        if tp > 1:  # block all-reduces, and the vocab-parallel logits gathered on the last stage
            t += self._tp_comm(model, dataclasses.replace(st, last=False), batch, tp, False)
            if st.last and model.head == "lm":
                t += self.all_reduce_time(batch * local_dims(model.config, tp)[3] * tp * model.dtype_bytes, tp,
                                          tp) / 2
        return t

    # -------------------------------------------------------- memory

    def resident_bytes(self, model: ModelInfo, strategy: Strategy) -> int:
        """Bytes one worker keeps between calls: its parameter shard, and when
        the model trains the Trainer's gradient, Adam moments, masks and master
        weights (TRAIN_STATE_BYTES); sharded over tp * pp, replicated over dp.
        The largest stage counts."""
        per_param = model.dtype_bytes
        if model.trains:
            per_param += TRAIN_STATE_BYTES + (MASTER_BYTES if model.dtype_bytes != 4 else 0)
        return max(st.numel for st in stages(model.config, model.head, strategy.tp, strategy.pp)) * per_param

    def peak_bytes(self, model: ModelInfo | None, work: MFCWork, strategy: Strategy) -> int:
        """Transient bytes one worker needs on top of resident_bytes while the
        MFC runs (the largest stage counts)."""
        if work.interface == "reward_fn" or model is None:
            return 0
        seqs = -(-work.n_seqs // strategy.dp)
        sts = stages(model.config, model.head, strategy.tp, strategy.pp)
        peak = {"generate": self._generate_peak, "inference": self._inference_peak,
                "train_step": self._train_peak}[work.interface]
        return int(max(peak(model, work, strategy, st, seqs) for st in sts))

    def _working_set(self, model, tokens, tp) -> float:
        """Live tensors inside one block's forward without autograd: the
        residual stream, the normalised input (plus the norm's float32 copy),
        and the larger of attention (q, k, v, rope'd q and k, output) and the
        MLP (gate and up, the activation and the product)."""
        q, kv, inter, _ = local_dims(model.config, tp)
        h, d = model.config.hidden_size, model.dtype_bytes
        return tokens * (2 * d * h + 4 * h + d * max(3 * q + 3 * kv, 4 * inter))

    def _logits_chunk(self, model, tokens, tp) -> float:
        """The fused log-prob head's float32 chunk (logprob.CHUNK_ELEMENTS):
        logits, their shifted exponent and the gradient, three at a time."""
        vocab = local_dims(model.config, tp)[3]
        rows = min(tokens, max(1, CHUNK_ELEMENTS // vocab))
        return 3 * 4 * rows * vocab

    def _train_peak(self, model, work, strategy, st: Stage, seqs) -> float:
        """Saved activations of the micro-batches held at once (GPipe keeps all
        of them until the backward starts; without pp one at a time), the stage
        boundary tensors, one block's gradients during the backward, the head,
        the largest parameter's gradient before the hook folds it in; or the
        optimizer's float32 temporary (one at a time), whichever is larger."""
        c, tp, pp, d = model.config, strategy.tp, strategy.pp, model.dtype_bytes
        mb_seqs = seqs / work.n_minibatches
        n_mb = max(1, min(strategy.n_microbatches, int(mb_seqs)))
        tok = mb_seqs * work.seq_len / n_mb
        held = n_mb if pp > 1 else 1
        per_block = activation_bytes_per_token(c, tp, d) * tok
        saved = c.hidden_size * d * tok if model.activation_checkpointing else per_block   # per block and micro-batch
        acts = held * saved * st.n_blocks + (pp > 1) * held * 2 * tok * c.hidden_size * d
        head = 0.0
        if st.last:
            norm = (4 + 2 * d) * c.hidden_size * tok
            if model.head == "lm":  # float32 input gradient and weight gradient of the fused log-prob head
                vocab = local_dims(c, tp)[3]
                head = norm + 4 * tok * c.hidden_size + 4 * vocab * c.hidden_size + self._logits_chunk(model, tok, tp)
            else:
                head = norm + 8 * tok
        train = acts + per_block + head + st.largest * d
        return max(train, 4 * st.numel)

    def _inference_peak(self, model, work, strategy, st: Stage, seqs) -> float:
        c, tp, pp, d = model.config, strategy.tp, strategy.pp, model.dtype_bytes
        tokens = seqs * work.seq_len
        n_mb = min(strategy.n_microbatches, seqs) if pp > 1 else 1
        t = self._working_set(model, tokens / n_mb, tp)
        if st.last:  # final hidden states of every micro-batch (and their concatenation), then the head
            hidden = (2 if pp > 1 else 1) * tokens * c.hidden_size * d
            head = self._logits_chunk(model, tokens, tp) + 8 * tokens if model.head == "lm" else tokens * (d + 4)
            t += hidden + head
        return t

    def _generate_peak(self, model, work, strategy, st: Stage, seqs) -> float:
        """The paged KV cache of this stage's layers at its final size, plus a
        prefill chunk's working set and the last tokens' logits."""
        c, tp, pp, d = model.config, strategy.tp, strategy.pp, model.dtype_bytes
        cache = kv_cache_tokens(seqs, work.prompt_len, work.gen_len) * kv_bytes_per_token(c, tp, d) * st.n_blocks
        chunk = work.prompt_len if pp > 1 else max(work.prompt_len, min(PREFILL_TOKENS, seqs * work.prompt_len))
        logits = seqs * c.vocab_size * (d + 8) if st.last and model.head == "lm" else 0
        return cache + self._working_set(model, chunk, tp) + logits


# ------------------------------------------------------------ analytic

class AnalyticCost(CostModel):
    """Times from FLOPs and bytes over a Hardware's peak numbers.

    - A pass over a stage's blocks takes max(compute, weight traffic, host):
      compute = FLOPs / (peak_flops * mfu * tp_efficiency ** log2(tp)), FLOPs
      from block_flops (3x with the backward); weight traffic = weights read
      once forward, and with the backward read twice more, their gradient
      written and folded into the float32 gradient buffer (5d + 8 bytes per
      weight); host = OPS_PER_BLOCK (x3 with backward) * op_overhead.
    - Head: the logits matmul (4x its forward FLOPs with the backward: the
      fused log-prob head recomputes them) plus LOGIT_BYTES_* per logit over
      mem_bw; the value head is negligible.
    - Decode step, per block: max(weights / (mem_bw * decode_bw_eff), FLOPs
      bound) + KV cache reads / (mem_bw * decode_bw_eff); the last stage adds
      the head's weights and the sampler's pass over the logits. The step
      costs at least its host time (ops and per-sequence bookkeeping).
    - Optimizer: OPTIMIZER_BYTES per parameter over mem_bw (memory-bound).
    - All-reduce: ring bandwidth term 2 (n-1)/n * bytes / bw plus a tree-like
      latency term 2 log2(n) * latency (NCCL's choice for small messages);
      bw is NVLink when the group stays in a node, else InfiniBand.
    - Point-to-point: latency + bytes / link bandwidth.

    tp_efficiency (0.95 per doubling) says narrower per-rank matmuls run
    further from peak; op_overhead (10 us) is PyTorch's eager dispatch cost of
    one CUDA op (gpt-fast: eager LLaMA-7B decoding is host-bound at ~25 tok/s
    on an A100, ~4x below its bandwidth bound). Both are assumptions until
    checked against measured GPU runs.
    """

    def __init__(self, hardware, *, tp_efficiency: float = 0.95, op_overhead: float = 1e-5):
        super().__init__(hardware)
        self.tp_efficiency, self.op_overhead = tp_efficiency, op_overhead

    def _flops_rate(self, tp: int) -> float:
        hw = self.hardware
        return hw.peak_flops * hw.mfu * self.tp_efficiency ** math.log2(tp)

    def layers_time(self, model, n_layers, tokens, seq_len, tp, backward):
        c, d = model.config, model.dtype_bytes
        flops = n_layers * block_flops(c, tokens, seq_len, tp) * (3 if backward else 1)
        weights = n_layers * block_matmul_params(c, tp) * ((5 * d + 8) if backward else d)
        host = n_layers * OPS_PER_BLOCK * (3 if backward else 1) * self.op_overhead
        return max(flops / self._flops_rate(tp), weights / self.hardware.mem_bw, host)

    def head_time(self, model, tokens, tp, backward):
        if model.head != "lm":
            return 0.0
        c, hw = model.config, self.hardware
        vocab = local_dims(c, tp)[3]
        matmul = head_flops(c, "lm", tokens, tp) * (4 if backward else 1) / self._flops_rate(tp)
        logits = tokens * vocab * (LOGIT_BYTES_BWD if backward else LOGIT_BYTES_FWD) / hw.mem_bw
        return matmul + logits

    def decode_time(self, model, n_layers, batch, context, tp, last):
        c, d, hw = model.config, model.dtype_bytes, self.hardware
        bw = hw.mem_bw * hw.decode_bw_eff
        weights = block_matmul_params(c, tp) * d
        per_block = max(weights / bw, decode_block_flops(c, batch, context, tp) / self._flops_rate(tp))
        kv = batch * context * kv_bytes_per_token(c, tp, d)
        device = n_layers * (per_block + kv / bw)
        host = n_layers * OPS_PER_BLOCK * self.op_overhead
        if last:
            vocab = local_dims(c, tp)[3] if model.head == "lm" else 1
            head_w = vocab * c.hidden_size * d
            device += max(head_w / bw, head_flops(c, model.head, batch, tp) / self._flops_rate(tp))
            device += batch * vocab * tp * (d + 4 * 4) / bw   # gathered logits, read by the float32 sampler
            host += OPS_PER_DECODE_STEP * self.op_overhead + HOST_SECONDS_PER_SEQ * batch
        return max(device, host)

    def optimizer_time(self, numel, dtype_bytes):
        per = OPTIMIZER_BYTES + (4 + dtype_bytes if dtype_bytes != 4 else 0)
        return numel * per / self.hardware.mem_bw

    def all_reduce_time(self, nbytes, n, span):
        if n <= 1:
            return 0.0
        hw = self.hardware
        bw = hw.intra_bw if span <= hw.gpus_per_node else hw.inter_bw
        return 2 * (n - 1) / n * nbytes / bw + 2 * math.ceil(math.log2(n)) * hw.latency

    def p2p_time(self, nbytes, a, b):
        lat = 0.0 if a == b else self.hardware.latency
        return lat + nbytes / self.hardware.link_bw(a, b)


# ------------------------------------------------------------ profiled

class Curve:
    """A measured time as a function of size, piecewise linear in log-log
    space between grid points. Times are made non-decreasing (more work never
    takes less time; noise otherwise breaks monotonicity). Below the grid a
    call costs what the smallest point did (overhead-bound); above it the last
    two points extend as a line, a fixed cost plus a marginal cost per unit
    (proportional with a single point)."""

    def __init__(self, xs, ys):
        pairs = sorted(zip(map(float, xs), map(float, ys)))
        if not pairs or any(x <= 0 or y <= 0 for x, y in pairs):
            raise ValueError(f"a profile curve needs positive sizes and times, got {list(zip(xs, ys))}")
        self.xs = [x for x, _ in pairs]
        self.ys = []
        for _, y in pairs:
            self.ys.append(max(y, self.ys[-1]) if self.ys else y)

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else ys[-1] / xs[-1]
            return ys[-1] + (x - xs[-1]) * slope
        i = bisect.bisect_right(xs, x) - 1
        f = math.log(x / xs[i]) / math.log(xs[i + 1] / xs[i])
        return math.exp(math.log(ys[i]) + f * math.log(ys[i + 1] / ys[i]))


def config_from_profile(d: dict) -> ModelConfig:
    fields = dict(d)
    fields["rope_scaling"] = tuple(tuple(p) for p in fields.get("rope_scaling", ()))
    return ModelConfig(**fields)


class ProfiledCost(CostModel):
    """Times measured on this machine (profile.py) with real_ext's own code.

    The profile times one block (as one tp rank computes it, at each profiled
    tp), the outer part (embedding, final norm, head), a decode step and the
    optimizer of its model on a grid of sizes. Work of another shape (another
    config, a tp that was not profiled) costs the measured call at the same
    size (tokens, batch), which carries the per-op and
    per-sequence overheads and the working-set effects of that size, plus the
    FLOPs by which the two differ at the machine's matmul rate (bounded below
    by scaling the measured time with the FLOP ratio when the target does
    less). At the profiled model this is the measurement; for the sort task's
    "small" model (4x the FLOPs) mapped from a "tiny" profile, forward and
    training came within ~25% of fresh timings here, but decode steps ran up
    to ~1.8x slower than predicted (small-batch products stream weights far
    below the copy bandwidth): profile the model you plan for. Times are of
    the profile's dtype (float32) and thread count; ModelInfo.dtype changes
    memory only. Communication uses the gloo fits.
    """

    def __init__(self, hardware, profile: dict):
        super().__init__(hardware)
        self.profile = profile
        self.config = config_from_profile(profile["model_config"])
        layer, head, dec = profile["layer"], profile["head"], profile["decode"]
        self.seq_len = layer["seq_len"]
        # (tp, backward) -> one tp rank's block time vs tokens
        self.layer_curves = {(int(tp), bwd): Curve(layer["tokens"], times[key])
                             for tp, times in layer["tp"].items()
                             for bwd, key in ((False, "forward_s"), (True, "forward_backward_s"))}
        self.head_curves = {(name, bwd): Curve(head["tokens"], head[f"{name}_{key}"])
                            for name in HEADS for bwd, key in ((False, "forward_s"), (True, "forward_backward_s"))}
        self.decode_context = dec["context"]
        self.decode_layer = Curve(dec["batch"], dec["layer_s"])
        self.decode_fixed = Curve(dec["batch"], dec["fixed_s"])
        self.optimizer = Curve(profile["optimizer"]["params"], profile["optimizer"]["step_s"])
        self.flop_rate = profile["machine"]["matmul_flops"]
        self.p2p_fit = profile["comm"]["p2p"]
        self.all_reduce_fit = profile["comm"]["all_reduce"]

    @staticmethod
    def from_json(path: str, n_workers: int | None = None) -> "ProfiledCost":
        """A cost model for ``n_workers`` local workers (default: one per core)."""
        from real_ext.plan.hardware import cpu_hardware, load_profile
        profile = load_profile(path)
        return ProfiledCost(cpu_hardware(profile, n_workers or profile["machine"]["cpu_count"]), profile)

    def _adjusted(self, measured: float, target_flops: float, profiled_flops: float, extra_bytes: float = 0.0) -> float:
        extra = max((target_flops - profiled_flops) / self.flop_rate, extra_bytes / self.hardware.mem_bw)
        return max(measured + extra, measured * min(1.0, target_flops / profiled_flops))

    def layers_time(self, model, n_layers, tokens, seq_len, tp, backward):
        """The profiled block at this tp (at tp = 1 when this tp was not
        profiled), adjusted to the model's FLOPs."""
        if not n_layers or not tokens:
            return 0.0
        passes = 3 if backward else 1
        at = tp if (tp, backward) in self.layer_curves else 1
        t = self._adjusted(self.layer_curves[at, backward](tokens),
                           passes * block_flops(model.config, tokens, seq_len, tp),
                           passes * block_flops(self.config, tokens, self.seq_len, at))
        return n_layers * t

    def head_time(self, model, tokens, tp, backward):
        if not tokens:
            return 0.0
        passes = (4 if backward else 1) if model.head == "lm" else (3 if backward else 1)
        return self._adjusted(self.head_curves[model.head, backward](tokens),
                              passes * head_flops(model.config, model.head, tokens, tp),
                              passes * head_flops(self.config, model.head, tokens))

    def decode_time(self, model, n_layers, batch, context, tp, last):
        """Blocks as layers_time, the extra cost being the larger of the extra
        FLOPs and the extra float32 weights read; on the last stage the measured fixed part
        (embedding, head, sampling, bookkeeping) adjusted for the head's FLOPs,
        plus the sampler's extra pass over a larger vocabulary."""
        c, p = model.config, self.config
        # a decode step reads every weight: small-batch products are bound by that, not by FLOPs
        weights = 4 * (block_matmul_params(c, tp) - block_matmul_params(p))
        t = n_layers * self._adjusted(self.decode_layer(batch), decode_block_flops(c, batch, context, tp),
                                      decode_block_flops(p, batch, self.decode_context), weights)
        if last:
            t += self._adjusted(self.decode_fixed(batch), head_flops(c, "lm", batch, tp), head_flops(p, "lm", batch))
            extra_vocab = local_dims(c, tp)[3] * tp - padded_vocab(p.vocab_size, 1)
            t += max(batch * extra_vocab * LOGIT_BYTES_FWD / self.hardware.mem_bw, 0.0)
        return t

    def optimizer_time(self, numel, dtype_bytes):
        return self.optimizer(numel)

    def all_reduce_time(self, nbytes, n, span):
        """Ring: the 2-process fit (t = latency + bytes / bw, where a 2-rank ring
        moves each byte once) stretched to 2 (n-1) steps moving 2 (n-1)/n bytes."""
        if n <= 1:
            return 0.0
        fit = self.all_reduce_fit
        return (n - 1) * fit["latency"] + 2 * (n - 1) / n * nbytes / fit["bw"]

    def p2p_time(self, nbytes, a, b):
        if a == b:
            return nbytes / self.hardware.link_bw(a, b)
        return self.p2p_fit["latency"] + nbytes / self.p2p_fit["bw"]
