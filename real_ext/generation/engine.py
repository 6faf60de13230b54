"""generate(): prefill with the packed attention op writing a paged KV cache,
then decode steps (decode-attention op over the cache, fused sampling op);
finished sequences leave the running batch. On CUDA the decode steps of a
single-stage model without tensor parallelism replay CUDA graphs (one per
batch-size bucket, cuda_graphs.py). Works on a single-process
ReaLModel and under tensor parallelism (every tp rank computes the same
vocab-gathered logits and draws the same uniforms, so they agree on every
token); pipeline-parallel models go through pipelined.py.

Log-probabilities: each generated token's log-probability under the
distribution it was drawn from: softmax(logits / temperature) truncated to
top-k / top-p and renormalised (greedy: untruncated). This equals what
ReaLModel.logprobs(..., temperature, top_k, top_p) computes for the same tokens,
except while min_new_tokens holds the stop tokens back: those first tokens are
drawn with the stop tokens removed, which the training forward does not do.
"""
from __future__ import annotations

import dataclasses
import functools

import torch

from real_ext import ops
from real_ext.generation.config import GenerationConfig, GenerationOutput
from real_ext.generation.cuda_graphs import DecodeGraphs, usable
from real_ext.generation.kv_cache import CacheStep, PagedKVCache
from real_ext.generation.rng import uniforms
from real_ext.heap import hold_freed_memory
from real_ext.model.row_major import row_major_products
from real_ext.ops import cpu_blas

PREFILL_TOKENS = 8192  # prompt tokens per prefill forward (bounds activation memory)


@dataclasses.dataclass
class Sample:
    index: int             # position in the output
    sample_id: int         # the key of its random stream (see rng.py)
    prompt_index: int
    prompt_len: int
    tokens: list = dataclasses.field(default_factory=list)
    logprobs: list = dataclasses.field(default_factory=list)
    stopped: bool = False
    done: bool = False


def check_request(model, prompts: list[list[int]], config: GenerationConfig) -> None:
    """Bad requests fail here, before any work (and identically on every rank)."""
    if model.head != "lm":
        raise ValueError("generate needs a model with an LM head (head='lm'), got a value head")
    if not prompts:
        raise ValueError("generate: the prompt list is empty")
    vocab, context = model.config.vocab_size, model.config.max_positions
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"generate: prompt {i} is empty")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"generate: prompt {i} has token ids outside [0, {vocab})")
        if len(prompt) + config.max_new_tokens > context:
            raise ValueError(f"generate: prompt {i} has {len(prompt)} tokens; with max_new_tokens="
                             f"{config.max_new_tokens} that exceeds the model's context of {context} tokens")
    for t in config.stop_token_ids:
        if not 0 <= t < vocab:
            raise ValueError(f"generate: stop token id {t} is outside the vocabulary [0, {vocab})")


def make_samples(prompts, config: GenerationConfig, prompt_ids) -> list[Sample]:
    ids = list(range(len(prompts))) if prompt_ids is None else [int(i) for i in prompt_ids]
    if len(ids) != len(prompts):
        raise ValueError(f"generate: {len(ids)} prompt_ids for {len(prompts)} prompts")
    n = config.n_samples
    return [Sample(p * n + k, ids[p] * n + k, p, len(prompt)) for p, prompt in enumerate(prompts) for k in range(n)]


def resolve_seed(model, config: GenerationConfig) -> int:
    """The config's seed, or one drawn here and shared by the model's ranks."""
    if config.seed is not None:
        return int(config.seed)
    seed = torch.randint(0, 2 ** 62, (1,), dtype=torch.int64, device=model.flat.device)
    group = model.ctx.model_group
    if group is not None:
        import torch.distributed as dist
        dist.broadcast(seed, src=model.ctx.layout.rank(0, model.ctx.coord.dp, 0), group=group)
    return int(seed)


def new_cache(model, prompts, config: GenerationConfig) -> PagedKVCache:
    layers = [block.self_attn.layer for block in model.model.layers.values()]
    attn = next(iter(model.model.layers.values())).self_attn
    # Room for the prompts' blocks (held once, whatever n_samples) and one more
    # block per sample (its copy of the prompt's last block, or its first new
    # tokens); past that the cache doubles as the samples grow.
    block = 16
    prompt_blocks = sum(-(-len(p) // block) for p in prompts)
    return PagedKVCache(layers, attn.kv_heads, attn.head_dim, model.flat.dtype, model.flat.device, block_size=block,
                        initial_blocks=prompt_blocks + len(prompts) * config.n_samples)


def draw(logits: torch.Tensor, samples: list[Sample], seed: int, step: int, config: GenerationConfig):
    """Tokens and log-probs for one row of logits per sample."""
    device = logits.device
    if config.greedy:  # the uniforms are not read
        u = torch.zeros(len(samples), dtype=torch.float32, device=device)
    else:
        u = uniforms(seed, [s.sample_id for s in samples], step).to(device)
    hold = [len(s.tokens) < config.min_new_tokens for s in samples]
    hold_stop = torch.tensor(hold, device=device) if config.stop_token_ids and any(hold) else None
    tokens, logprobs = ops.sample_tokens(
        logits, u, greedy=config.greedy, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
        suppress=hold_stop, banned=_banned(config.stop_token_ids, device) if hold_stop is not None else None)
    return tokens.tolist(), logprobs.tolist()


@functools.lru_cache(maxsize=64)
def _banned(stop_token_ids: tuple, device: torch.device) -> torch.Tensor:
    """The stop tokens as a device tensor, made once per (tokens, device)."""
    return torch.tensor(stop_token_ids, dtype=torch.int64, device=device)


def record(samples: list[Sample], tokens, logprobs, config: GenerationConfig) -> None:
    stop = set(config.stop_token_ids)
    for s, tok, lp in zip(samples, tokens, logprobs):
        s.tokens.append(tok)
        s.logprobs.append(lp)
        s.stopped = tok in stop
        s.done = s.stopped or len(s.tokens) >= config.max_new_tokens


def output(samples: list[Sample]) -> GenerationOutput:
    return GenerationOutput([s.tokens for s in samples], [s.logprobs for s in samples],
                            [s.stopped for s in samples], [s.prompt_index for s in samples])


def prefill(model, cache: PagedKVCache, prompts, seq_ids: list[int]) -> torch.Tensor:
    """Runs the prompts, filling the cache under seq_ids; logits of each prompt's last token."""
    device = model.flat.device
    last, group, tokens = [], [], 0
    for i, prompt in enumerate(prompts):
        group.append(i)
        tokens += len(prompt)
        if tokens >= PREFILL_TOKENS or i == len(prompts) - 1:
            ids = torch.tensor([t for j in group for t in prompts[j]], dtype=torch.int64, device=device)
            lengths = [len(prompts[j]) for j in group]
            cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
            slots = [slot for j in group for slot in cache.allocate(seq_ids[j], len(prompts[j]))]
            step = CacheStep(cache, torch.tensor(slots, dtype=torch.int64, device=device), decode=False)
            info = model.packed_info(cu, cache=step)
            info.last_only = True  # one row per prompt comes out: its last token's
            last.append(model.head_output(model.forward_stage(ids, info)))
            group, tokens = [], 0
    return torch.cat(last)


def check_window(model, running: list[Sample]) -> None:
    """A decode step must not run past a sliding attention window (on the
    host: the step's info is built without reading the device)."""
    window = model.config.sliding_window
    longest = max(s.prompt_len + len(s.tokens) for s in running)
    if window is not None and longest > window:
        raise ValueError(f"a sequence of {longest} tokens exceeds sliding_window={window}; "
                         f"sliding-window attention is not implemented")


def decode_inputs(model, cache: PagedKVCache, running: list[Sample]):
    """(last token of each sample, packed info) for one decode step; takes a
    cache slot per sample."""
    check_window(model, running)
    device = model.flat.device
    seqs = [s.index for s in running]
    slots = [cache.allocate(seq, 1)[0] for seq in seqs]
    step = CacheStep(cache, torch.tensor(slots, dtype=torch.int64, device=device), decode=True,
                     block_tables=cache.block_table(seqs), seq_lens=cache.seq_lens(seqs))
    tokens = torch.tensor([s.tokens[-1] for s in running], dtype=torch.int64, device=device)
    positions = torch.tensor([s.prompt_len + len(s.tokens) - 1 for s in running], device=device)
    return tokens, model.decode_info(positions, step)


def decode_step(model, cache: PagedKVCache, running: list[Sample]) -> torch.Tensor:
    """One token per running sample through the model; logits (B, vocab)."""
    return model.head_output(model.forward_stage(*decode_inputs(model, cache, running)))


@hold_freed_memory()
@torch.no_grad()
def generate(model, prompts: list[list[int]], config: GenerationConfig, *,
             prompt_ids: list[int] | None = None) -> GenerationOutput:
    """Continue every prompt n_samples times. ``prompt_ids`` (default 0..P-1)
    are global prompt numbers that key the random streams, so that data-parallel
    ranks each generating their share draw what one process would for all.
    Freed host memory stays in the process until it returns (real_ext/heap.py);
    on the CPU, transposed weights are read from row-major copies made for the
    call (real_ext/model/row_major.py), and the products MKL serves read
    weights it packed once for the call (cpu_blas.packed_weights)."""
    check_request(model, prompts, config)
    with row_major_products(model), cpu_blas.packed_weights():
        return _generate(model, prompts, config, prompt_ids)


def _generate(model, prompts, config: GenerationConfig, prompt_ids) -> GenerationOutput:
    if model.ctx.pp > 1:
        from real_ext.generation.pipelined import generate_pipelined
        return generate_pipelined(model, prompts, config, prompt_ids)
    samples = make_samples(prompts, config, prompt_ids)
    seed = resolve_seed(model, config)
    cache = new_cache(model, prompts, config)
    n = config.n_samples
    # Prefill each prompt once; its samples start from its cache (full blocks shared).
    prompt_seqs = [s.index for s in samples[::n]] if n == 1 else [-(p + 1) for p in range(len(prompts))]
    logits = prefill(model, cache, prompts, prompt_seqs)
    if n > 1:
        for s in samples:
            cache.share_sequence(prompt_seqs[s.prompt_index], s.index)
        for seq in prompt_seqs:
            cache.release(seq)
    record(samples, *draw(logits.repeat_interleave(n, dim=0), samples, seed, 0, config), config)
    graphs = None
    if usable(model, config) and config.max_new_tokens > 1:
        graphs = DecodeGraphs(model, cache, max(len(p) for p in prompts) + config.max_new_tokens)
    for step in range(1, config.max_new_tokens):
        for s in samples:
            if s.done and s.index in cache.lengths:
                cache.release(s.index)
                if graphs is not None:
                    graphs.forget(s.index)
        running = [s for s in samples if not s.done]
        if not running:
            break
        if graphs is not None and graphs.fits(len(running)):
            check_window(model, running)
            logits = graphs.logits(running)
        else:
            logits = decode_step(model, cache, running)
        record(running, *draw(logits, running, seed, step, config), config)
    return output(samples)
