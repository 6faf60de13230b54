"""The generation engine against HF transformers' generate (greedy, token for
token, stop tokens and min_new_tokens included), seeded sampling, and the
log-probabilities the training forward computes for the same tokens."""
import pytest
import torch

from real_ext.generation import GenerationConfig, generate
from real_ext.model import ReaLModel
from python_tests.model.hf_models import FAMILIES, VOCAB, save_random_hf
from real_ext.data.packed import cu_seqlens_of

PROMPTS = [[5, 17, 3, 99, 42, 7], [1], [60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74]]


@pytest.fixture(scope="module", params=FAMILIES)
def models(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = save_random_hf(request.param, path, seed=1)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf, ReaLModel.from_pretrained(str(path))


def hf_greedy(hf, prompt, max_new, stop=None, min_new=0):
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      do_sample=False, max_new_tokens=max_new, min_new_tokens=min_new, eos_token_id=stop)
    tokens = out[0, len(prompt):].tolist()
    if stop is not None and stop in tokens:  # HF pads after the stop token
        tokens = tokens[:tokens.index(stop) + 1]
    return tokens


def test_greedy_matches_hf(models):
    hf, ours = models
    expected = [hf_greedy(hf, p, 12) for p in PROMPTS]
    out = generate(ours, PROMPTS, GenerationConfig(max_new_tokens=12, greedy=True))
    assert out.output_ids == expected
    assert out.stopped == [False] * 3 and out.prompt_index == [0, 1, 2]
    # A stop token that greedy decoding reaches: generation ends on it, HF agrees.
    stop = expected[0][4]
    with_stop = generate(ours, PROMPTS, GenerationConfig(max_new_tokens=12, greedy=True, stop_token_ids=(stop,)))
    assert with_stop.output_ids == [hf_greedy(hf, p, 12, stop=stop) for p in PROMPTS]
    assert with_stop.stopped[0] and with_stop.output_ids[0][-1] == stop
    # min_new_tokens holds the stop token back.
    held = generate(ours, PROMPTS, GenerationConfig(max_new_tokens=12, min_new_tokens=8, greedy=True,
                                                    stop_token_ids=(stop,)))
    assert held.output_ids == [hf_greedy(hf, p, 12, stop=stop, min_new=8) for p in PROMPTS]
    assert all(len(t) >= 8 for t in held.output_ids)


def test_sampling_is_seeded_and_n_samples_are_adjacent(models):
    _, ours = models
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.8, top_k=30, top_p=0.95, n_samples=3, seed=11)
    a, b = generate(ours, PROMPTS, cfg), generate(ours, PROMPTS, cfg)
    assert a.output_ids == b.output_ids and a.logprobs == b.logprobs
    assert a.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len({tuple(t) for t in a.output_ids[:3]}) > 1  # the samples of a prompt differ
    other = generate(ours, PROMPTS, GenerationConfig(**{**cfg.__dict__, "seed": 12}))
    assert other.output_ids != a.output_ids
    # A sample's tokens do not depend on the other prompts in the batch.
    alone = generate(ours, PROMPTS[2:], cfg, prompt_ids=[2])
    assert alone.output_ids == a.output_ids[6:]


@pytest.mark.parametrize("kwargs", [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9),
                                    dict(greedy=True, temperature=1.3), dict(top_p=0.5)])
def test_logprobs_match_training_forward(models, kwargs):
    _, ours = models
    cfg = GenerationConfig(max_new_tokens=9, seed=3, **kwargs)
    out = generate(ours, PROMPTS, cfg)
    sequences = [p + o for p, o in zip(PROMPTS, out.output_ids)]
    ids = torch.tensor([t for s in sequences for t in s])
    cu = cu_seqlens_of([len(s) for s in sequences])
    trunc = {} if cfg.greedy else dict(top_k=cfg.top_k, top_p=cfg.top_p)
    with torch.no_grad():
        logp = ours.logprobs(ids, cu, temperature=cfg.temperature, **trunc)
    for i, (prompt, gen) in enumerate(zip(PROMPTS, out.logprobs)):
        start = int(cu[i]) + len(prompt) - 1  # the position that predicts the first generated token
        train = logp[start:start + len(gen)]
        assert (train - torch.tensor(gen)).abs().max() <= 1e-5, (i, kwargs)


def test_samples_sharing_a_prompts_cache_match_training_forward(models):
    """n_samples > 1 over prompts of whole and partial 16-token cache blocks
    (the samples share the full blocks): every sample's log-probs equal the
    training forward pass over its own prompt + response."""
    _, ours = models
    prompts = [list(range(3, 19)), [(7 * i) % 90 + 3 for i in range(37)], [4, 5, 6]]
    cfg = GenerationConfig(max_new_tokens=20, temperature=0.9, n_samples=3, seed=4)
    out = generate(ours, prompts, cfg)
    sequences = [prompts[p] + o for p, o in zip(out.prompt_index, out.output_ids)]
    cu = cu_seqlens_of([len(s) for s in sequences])
    with torch.no_grad():
        logp = ours.logprobs(torch.tensor([t for s in sequences for t in s]), cu, temperature=cfg.temperature)
    for i, (p, gen) in enumerate(zip(out.prompt_index, out.logprobs)):
        start = int(cu[i]) + len(prompts[p]) - 1
        assert (logp[start:start + len(gen)] - torch.tensor(gen)).abs().max() <= 1e-5, i


def test_prefill_in_several_forwards_matches_one(models, monkeypatch):
    # The prompts split over several prefill forwards (each computing its last
    # block for the prompts' last tokens only) give what one forward gives.
    _, ours = models
    from real_ext.generation import engine
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.9, seed=2)
    whole = generate(ours, PROMPTS, cfg)
    monkeypatch.setattr(engine, "PREFILL_TOKENS", 1)  # a forward per prompt
    split = generate(ours, PROMPTS, cfg)
    assert split.output_ids == whole.output_ids
    for a, b in zip(split.logprobs, whole.logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5


def test_fused_projections_follow_the_parameters(models):
    # Without autograd q/k/v (and gate/up) run as one product over a fused view of
    # the flat buffer that each layer keeps; moving the parameters must drop it.
    _, ours = models
    ids, cu = torch.tensor(PROMPTS[2]), cu_seqlens_of([len(PROMPTS[2])])
    with torch.no_grad():
        before = ours.forward_packed(ids, cu)
    flat = ours.release_storage()
    assert not any("_fused" in m.__dict__ for m in ours.modules())  # nothing keeps the old buffer alive
    try:
        for scale in (1.5, 2.0):  # the second buffer replaces the first directly (no release between)
            ours.adopt_storage(flat.clone().mul_(scale))  # another address, other values
            with torch.no_grad():
                fused = ours.forward_packed(ids, cu)
            per_projection = ours.forward_packed(ids, cu).detach()  # autograd on: one product per projection
            torch.testing.assert_close(fused, per_projection)
            assert not torch.allclose(fused, before)  # the new values were used
            before = fused
    finally:
        ours.adopt_storage(flat)


def test_finished_sequences_leave_the_batch(models, monkeypatch):
    _, ours = models
    from real_ext.generation import engine
    sizes = []
    real_step = engine.decode_step

    def recording_step(model, cache, running):
        sizes.append(len(running))
        return real_step(model, cache, running)
    monkeypatch.setattr(engine, "decode_step", recording_step)
    greedy = generate(ours, PROMPTS, GenerationConfig(max_new_tokens=12, greedy=True))
    stop = greedy.output_ids[1][2]  # prompt 1 stops after 3 tokens
    out = generate(ours, PROMPTS, GenerationConfig(max_new_tokens=12, greedy=True, stop_token_ids=(stop,)))
    finished_at = [len(t) for t in out.output_ids]
    sizes = sizes[11:]  # the second run's steps
    for step, size in enumerate(sizes, start=1):
        assert size == sum(1 for n in finished_at if n > step)


@pytest.mark.parametrize("prompts,kwargs,message", [
    ([], dict(max_new_tokens=4), "the prompt list is empty"),
    ([[1, 2], []], dict(max_new_tokens=4), "prompt 1 is empty"),
    ([[1] * 250], dict(max_new_tokens=10), "exceeds the model's context of 256"),
    ([[1, VOCAB]], dict(max_new_tokens=4), "token ids outside"),
    ([[1]], dict(max_new_tokens=4, stop_token_ids=(VOCAB + 3,)), "stop token id"),
])
def test_bad_requests(models, prompts, kwargs, message):
    _, ours = models
    with pytest.raises(ValueError, match=message):
        generate(ours, prompts, GenerationConfig(**kwargs))


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (dict(max_new_tokens=4, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(max_new_tokens=4, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(max_new_tokens=4, temperature=0.0), "temperature must be > 0"),
    (dict(max_new_tokens=4, min_new_tokens=5), "min_new_tokens must be in"),
    (dict(max_new_tokens=4, top_k=-1), "top_k must be >= 0"),
    (dict(max_new_tokens=4, n_samples=0), "n_samples must be >= 1"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)


def test_padded_bucket_steps_equal_exact_steps(models, monkeypatch):
    """The CUDA-graph path's bookkeeping (bucketed batches, padding rows in a
    scratch block, block tables kept per sample, cache growth), run eagerly on
    the CPU: the same tokens and log-probs as exact-size decode steps."""
    _, ours = models
    from real_ext.generation import cuda_graphs, engine
    prompts = [[3 + (7 * i + j) % 90 for j in range(1 + (5 * i) % 23)] for i in range(11)]
    greedy = generate(ours, prompts, GenerationConfig(max_new_tokens=12, greedy=True))
    stop = greedy.output_ids[0][2]
    cfg = GenerationConfig(max_new_tokens=60, min_new_tokens=20, temperature=0.9, top_k=40, n_samples=3,
                           stop_token_ids=(stop,), seed=5)
    exact = generate(ours, prompts, cfg)
    buckets = []
    real_logits = cuda_graphs.DecodeGraphs.logits

    def recording_logits(self, running):
        buckets.append((len(running), next(b for b in cuda_graphs.BUCKETS if b >= len(running))))
        return real_logits(self, running)
    generations = []
    real_fill = cuda_graphs.DecodeGraphs._fill

    def recording_fill(self, running, bucket):
        out = real_fill(self, running, bucket)
        generations.append(self.cache.generation)
        return out
    monkeypatch.setattr(engine, "usable", lambda model, config: True)
    monkeypatch.setattr(cuda_graphs.DecodeGraphs, "logits", recording_logits)
    monkeypatch.setattr(cuda_graphs.DecodeGraphs, "_fill", recording_fill)
    padded = generate(ours, prompts, cfg)
    assert any(n < b for n, b in buckets) and len({b for _, b in buckets}) > 1  # padding rows, several buckets
    assert generations[-1] > generations[0]  # the cache pools grew mid-generation
    assert any(exact.stopped) and not all(exact.stopped)
    assert padded.output_ids == exact.output_ids and padded.stopped == exact.stopped
    for a, b in zip(padded.logprobs, exact.logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5


@pytest.mark.parametrize("padded_buckets", [False, True])
def test_decoding_past_a_sliding_window_is_refused(monkeypatch, padded_buckets):
    """Sliding-window attention is not implemented: a decode step that would
    run past the window raises, on the eager and the CUDA-graph path alike."""
    from python_tests.model.hf_models import hf_config
    from real_ext.generation import engine
    from real_ext.model.config import ModelConfig
    config = hf_config("mistral").to_dict()
    model = ReaLModel.from_config(ModelConfig.from_hf_dict(dict(config, sliding_window=12)))
    if padded_buckets:  # the graph path's bookkeeping, run eagerly on the CPU
        monkeypatch.setattr(engine, "usable", lambda model, config: True)
    fits = generate(model, [[5] * 6], GenerationConfig(max_new_tokens=6, greedy=True))
    assert len(fits.output_ids[0]) == 6  # the last step sees 6 + 5 = 11 tokens
    with pytest.raises(ValueError, match="a sequence of 13 tokens exceeds sliding_window=12"):
        generate(model, [[5] * 6], GenerationConfig(max_new_tokens=8, greedy=True))
