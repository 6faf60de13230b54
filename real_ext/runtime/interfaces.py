"""What an MFC does on one worker, by interface. Data lives in SequenceSamples
(one sample = a prompt with its responses); see real_ext/data/sample.py.

- generate:   prompts (from the dataset) -> per sample, n_samples sequences of
              prompt + response under the MFC's four output keys, in order:
              (token ids, prompt length per sequence, behaviour log-probs per
              token (see below), stopped-at-a-stop-token per sequence)
- inference:  args kind "logprobs" | "values" (per token) | "score" (per
              sequence: a reward model's value at the last token) -> the MFC's
              output key
- reward_fn:  a rule-based reward per sequence (args "reward", see rewards.py);
              inputs named by the MFC: (token ids, prompt length)
- train_step: one or more optimizer updates with the algorithm's loss (args "loss")

Per-token log-probabilities are aligned with the tokens they predict from:
entry t is log p(token t+1 | tokens <= t), 0 at each sequence's last token.
Outputs stay on the ranks that computed them (the last pipeline stage for
inference); metadata (lengths, rewards) and statistics go to the master.
"""
from __future__ import annotations

import dataclasses

import torch

from real_ext.data.packed import PackedBatch
from real_ext.data.sample import SequenceSample
from real_ext.generation import GenerationConfig, generate
from real_ext.runtime.rewards import resolve_reward
from real_ext.runtime.transfer import store_add


@dataclasses.dataclass
class RunResult:
    outputs: SequenceSample | None                            # kept on this worker
    stats: dict = dataclasses.field(default_factory=dict)     # global: equal on every rank
    meta: dict = dataclasses.field(default_factory=dict)      # sample id -> {name: value} for the master
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
    def dataset(self):
        return self.worker.setup.datasets[self.args.get("split", "train")]

    def samples(self, keys) -> SequenceSample:
        """This rank's samples with the given keys; keys the dataset provides
        (e.g. SFT sequences) are read from it here, never transferred."""
        store = self.worker.store
        from_dataset = [k for k in keys if k in getattr(self.dataset, "keys", ())]
        for sid in self.sample_ids:
            if from_dataset and (sid not in store or not set(from_dataset) <= store[sid].keys):
                store_add(store, self.dataset.sample(sid).to(self.worker.device))
        return SequenceSample.gather([store[s] for s in self.sample_ids], keys)

    def batch(self, token_keys=(), seq_keys=(), ids_key: str = "input_ids") -> tuple[SequenceSample, PackedBatch]:
        """This rank's samples, and all their sequences as one packed batch."""
        samples = self.samples((ids_key,) + tuple(token_keys) + tuple(seq_keys))
        return samples, samples.packed(token_keys, seq_keys, ids_key).to(self.worker.device)


def _generate(ctx: RunContext) -> RunResult:
    gen = GenerationConfig(**ctx.mfc.args["generation"])
    if gen.seed is not None:  # a fresh random stream every step, the same on every run
        gen = dataclasses.replace(gen, seed=(gen.seed * 1_000_003 + ctx.args["step"]) % (1 << 62))
    ids_key, plen_key, logp_key, stop_key = ctx.mfc.outputs
    prompts = [ctx.dataset.prompt(p) for p in ctx.sample_ids]
    # Random streams are keyed by the global prompt id: any dp split draws the same tokens.
    out = generate(ctx.model, prompts, gen, prompt_ids=ctx.sample_ids)
    n = gen.n_samples
    parts, meta = [], {}
    for j, (sid, prompt) in enumerate(zip(ctx.sample_ids, prompts)):
        seqs = range(j * n, (j + 1) * n)   # the n samples of prompt j are adjacent
        ids, logps = [], []
        for i in seqs:
            tokens = out.output_ids[i]
            ids.append(torch.tensor(prompt + tokens, dtype=torch.int64))
            behav = torch.zeros(len(prompt) + len(tokens), dtype=torch.float32)
            behav[len(prompt) - 1:len(prompt) - 1 + len(tokens)] = torch.tensor(out.logprobs[i], dtype=torch.float32)
            logps.append(behav)
        stopped = [bool(out.stopped[i]) for i in seqs]
        parts.append(SequenceSample.single(
            sid, **{ids_key: ids, logp_key: logps, plen_key: [torch.tensor([len(prompt)]) for _ in seqs],
                    stop_key: [torch.tensor([int(s)]) for s in stopped]}))
        meta[sid] = {"lengths": [t.numel() for t in ids], "prompt_len": len(prompt), "stopped": stopped}
    n_tokens = sum(len(t) for t in out.output_ids)
    outputs = SequenceSample.gather(parts).to(ctx.worker.device) if parts else None
    return RunResult(outputs, meta=meta, summed={"response_tokens": n_tokens, "sequences": len(out.output_ids)})


@torch.no_grad()
def _inference(ctx: RunContext) -> RunResult:
    kind, key = ctx.mfc.args.get("kind"), ctx.mfc.outputs[0]
    ids_key = ctx.mfc.inputs[0]
    samples, batch = ctx.batch(ids_key=ids_key)
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
        return RunResult(None)
    if kind == "score":  # a reward model: the value at each sequence's last token
        scores = values.float()[batch.cu_seqlens[1:].long() - 1]
        counts = [len(lens) for lens in samples.seqlens[ids_key]]
        outputs = SequenceSample(list(samples.ids), {key: [[1] * c for c in counts]}, {key: scores})
        meta = {sid: {key: part.data[key].tolist()} for sid, part in zip(samples.ids, outputs.unpack())}
        return RunResult(outputs, meta=meta)
    return RunResult(samples.with_packed(key, values.float(), like=ids_key))


def _reward_fn(ctx: RunContext) -> RunResult:
    reward = resolve_reward(ctx.mfc.args["reward"])
    key = ctx.mfc.outputs[0]
    ids_key, plen_key = ctx.mfc.inputs
    samples, batch = ctx.batch(seq_keys=(plen_key,), ids_key=ids_key)
    cu, ids = batch.cu_seqlens.tolist(), batch.input_ids.tolist()
    plens = batch.seq_data[plen_key].tolist()
    rewards = [float(reward(ids[cu[i]:cu[i] + p], ids[cu[i] + p:cu[i + 1]])) for i, p in enumerate(plens)]
    counts = [len(lens) for lens in samples.seqlens[ids_key]]
    outputs = SequenceSample(list(samples.ids), {key: [[1] * c for c in counts]},
                             {key: torch.tensor(rewards, dtype=torch.float32, device=ctx.worker.device)})
    meta, start = {}, 0
    for sid, c in zip(samples.ids, counts):
        meta[sid] = {key: rewards[start:start + c]}
        start += c
    return RunResult(outputs, meta=meta)


def _train_step(ctx: RunContext) -> RunResult:
    from real_ext.algo import TRAIN_STEPS
    loss = ctx.mfc.args["loss"]
    if loss not in TRAIN_STEPS:
        raise ValueError(f"MFC {ctx.mfc.name!r}: loss {loss!r} unknown; expected one of {sorted(TRAIN_STEPS)}")
    return RunResult(None, stats=TRAIN_STEPS[loss](ctx))


_INTERFACES = {"generate": _generate, "inference": _inference, "reward_fn": _reward_fn, "train_step": _train_step}


def run_interface(ctx: RunContext) -> RunResult:
    return _INTERFACES[ctx.mfc.interface](ctx)
