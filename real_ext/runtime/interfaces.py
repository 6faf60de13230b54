"""What an MFC does on one worker, by interface:

- generate:   prompts (from the dataset) -> "input_ids" (prompt + response),
              "prompt_len", "behav_logp" (per token, see below), "stopped" (the
              MFC's four output names, in this order)
- inference:  args kind "logprobs" | "values" | "score" -> the MFC's output key
- reward_fn:  a rule-based reward on each sample (args "reward", see rewards.py); inputs named
              (input_ids, prompt_len) by the MFC -> its output key
- train_step: one or more optimizer updates with the algorithm's loss (args "loss")

Per-token log-probabilities are aligned with the tokens they predict from:
entry t is log p(token t+1 | tokens <= t), 0 at each sequence's last token.
Outputs are kept on the ranks that computed them (the last pipeline stage for
inference); metadata (lengths, rewards) and statistics go to the master.
"""
from __future__ import annotations

import dataclasses

import torch

from real_ext.data.packed import PackedBatch, cu_seqlens_of
from real_ext.generation import GenerationConfig, generate
from real_ext.runtime.rewards import resolve_reward


@dataclasses.dataclass
class RunResult:
    outputs: dict                                             # sample id -> {key: tensor}, kept here
    stats: dict = dataclasses.field(default_factory=dict)     # global: equal on every rank
    meta: dict = dataclasses.field(default_factory=dict)      # sample id -> {name: number} for the master
    summed: dict = dataclasses.field(default_factory=dict)    # this data-parallel rank's share of a sum


@dataclasses.dataclass
class RunContext:
    worker: object
    mfc: object
    model: object
    trainer: object
    sample_ids: list[int]
    args: dict

    @property
    def store(self):
        return self.worker.store

    @property
    def dataset(self):
        return self.worker.setup.dataset

    def batch(self, token_keys=(), seq_keys=()) -> PackedBatch:
        """This rank's samples as a packed batch (input_ids plus the given keys)."""
        data = [self.store[s] for s in self.sample_ids]
        ids = torch.cat([d["input_ids"] for d in data]) if data else torch.zeros(0, dtype=torch.int64)
        batch = PackedBatch(ids, cu_seqlens_of([d["input_ids"].numel() for d in data]))
        for k in token_keys:
            batch.token_data[k] = torch.cat([d[k] for d in data])
        for k in seq_keys:
            batch.seq_data[k] = torch.stack([d[k].reshape(()) for d in data])
        batch.seq_data["sample_id"] = torch.tensor(self.sample_ids, dtype=torch.int64)
        return batch.to(self.worker.device)


def _split_per_sample(values: torch.Tensor, batch: PackedBatch, key: str) -> dict:
    cu = batch.cu_seqlens.tolist()
    return {int(sid): {key: values[cu[i]:cu[i + 1]].detach().cpu()}
            for i, sid in enumerate(batch.seq_data["sample_id"].tolist())}


def _generate(ctx: RunContext):
    """Samples of prompt p get ids sample_offset + p * n_samples + k. The four
    outputs are named by the MFC: (input_ids, prompt_len, behav_logp, stopped)."""
    gen = GenerationConfig(**ctx.mfc.args["generation"])
    if gen.seed is not None:  # a fresh random stream every step, the same on every run
        gen = dataclasses.replace(gen, seed=(gen.seed * 1_000_003 + ctx.args["step"]) % (1 << 62))
    offset = ctx.mfc.args.get("sample_offset", 0)
    ids_key, plen_key, logp_key, stop_key = ctx.mfc.outputs
    prompts = [ctx.dataset.prompt(p) for p in ctx.sample_ids]
    out = generate(ctx.model, prompts, gen, prompt_ids=[offset + p for p in ctx.sample_ids])
    outputs, meta = {}, {}
    for i, (tokens, logps, stopped, p) in enumerate(zip(out.output_ids, out.logprobs, out.stopped,
                                                        out.prompt_index)):
        sid = offset + ctx.sample_ids[p] * gen.n_samples + i % gen.n_samples
        prompt = prompts[p]
        behav = torch.zeros(len(prompt) + len(tokens), dtype=torch.float32)
        behav[len(prompt) - 1:len(prompt) - 1 + len(tokens)] = torch.tensor(logps, dtype=torch.float32)
        outputs[sid] = {ids_key: torch.tensor(prompt + tokens, dtype=torch.int64),
                        plen_key: torch.tensor(len(prompt)), logp_key: behav, stop_key: torch.tensor(stopped)}
        meta[sid] = {"length": len(prompt) + len(tokens), "prompt_len": len(prompt), "stopped": stopped}
    n_tokens = sum(len(t) for t in out.output_ids)
    return RunResult(outputs, meta=meta, summed={"response_tokens": n_tokens, "samples": len(out.output_ids)})


@torch.no_grad()
def _inference(ctx: RunContext):
    kind, key = ctx.args.get("kind", ctx.mfc.args.get("kind")), ctx.mfc.outputs[0]
    batch = ctx.batch()
    n_mb = ctx.mfc.allocation.n_microbatches
    model = ctx.model
    if kind == "logprobs":
        temp = ctx.mfc.args.get("temperature", 1.0)
        values = model.logprobs(batch.input_ids, batch.cu_seqlens, temperature=temp, n_microbatches=n_mb)
    elif kind in ("values", "score"):
        values = model(batch.input_ids, batch.cu_seqlens, n_microbatches=n_mb)
    else:
        raise ValueError(f"MFC {ctx.mfc.name!r}: inference kind {kind!r} unknown (logprobs, values, score)")
    if values is None:  # not the last pipeline stage: nothing to keep
        return RunResult({})
    if kind == "score":  # a reward model: the value at each sequence's last token
        last = batch.cu_seqlens[1:].long() - 1
        scores = values.float()[last].cpu()
        outputs = {int(s): {key: scores[i]} for i, s in enumerate(batch.seq_data["sample_id"].tolist())}
        meta = {sid: {key: float(d[key])} for sid, d in outputs.items()}
        return RunResult(outputs, meta=meta)
    return RunResult(_split_per_sample(values.float(), batch, key))


def _reward_fn(ctx: RunContext):
    reward = resolve_reward(ctx.mfc.args["reward"])
    key = ctx.mfc.outputs[0]
    ids_key, plen_key = ctx.mfc.inputs  # named by the MFC: (input_ids, prompt_len)
    outputs, meta = {}, {}
    for sid in ctx.sample_ids:
        ids, plen = ctx.store[sid][ids_key].tolist(), int(ctx.store[sid][plen_key])
        r = float(reward(ids[:plen], ids[plen:]))
        outputs[sid] = {key: torch.tensor(r, dtype=torch.float32)}
        meta[sid] = {key: r}
    return RunResult(outputs, meta=meta)


def _train_step(ctx: RunContext):
    from real_ext.algo import TRAIN_STEPS
    loss = ctx.mfc.args["loss"]
    if loss not in TRAIN_STEPS:
        raise ValueError(f"MFC {ctx.mfc.name!r}: loss {loss!r} unknown; expected one of {sorted(TRAIN_STEPS)}")
    return RunResult({}, stats=TRAIN_STEPS[loss](ctx))


_INTERFACES = {"generate": _generate, "inference": _inference, "reward_fn": _reward_fn, "train_step": _train_step}


def run_interface(ctx: RunContext) -> RunResult:
    return _INTERFACES[ctx.mfc.interface](ctx)
