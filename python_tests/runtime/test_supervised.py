"""SFT, reward modelling (RW) and DPO on the runtime.

One step on 2 gloo workers (data-parallel training with micro-batches, DPO's
reference under tensor parallelism), after an evaluation, gives the loss,
statistics and updated parameters of the same step computed in one process
with Hugging Face transformers and loss math written here in plain torch; the
evaluation gives the reference's loss on the eval data and, since the step
after it still matches, leaves the parameters alone. RW and DPO learn the sort
task's preferences; bad configurations are named."""
from __future__ import annotations

import multiprocessing

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

from real_ext.algo import DPO, RW, SFT, DPOConfig, RWConfig, SFTConfig
from real_ext.data.completions import CompletionDataset
from real_ext.data.prompts import PromptDataset
from real_ext.model import ReaLModel
from real_ext.model.config import ModelConfig
from real_ext.model.train import OptimConfig
from real_ext.runtime import Allocation, AllocationError, Master, ModelSpec
from real_ext.runtime.launcher import WorkerFailure
from real_ext.tasks import get_task
from real_ext.tasks.warm_start import warm_start

TASK = get_task("sort", min_len=3, max_len=5)
LR = 1e-3
# Adam's first step is ~lr * g / (|g| + eps): with the usual eps=1e-8, float32
# noise in a near-zero gradient (HF and we sum in different orders) flips that
# element's step between +lr and -lr. eps=1e-6 keeps the step a smooth function
# of the gradient, so the two runs can be compared element by element.
OPTIM = dict(lr=LR, eps=1e-6)
BATCH = 8
TRAIN = Allocation((0, 1), dp=2, n_microbatches=2)
REF = Allocation((0, 1), tp=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The warm start and the reference run tiny matmuls (one short sequence at
    a time): extra threads only wait on each other, badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> tuple[str, str]:
    """Two different causal LMs: a short warm start and a fresh model."""
    warm = warm_start(TASK, str(tmp_path_factory.mktemp("warm")), steps=20)
    fresh = str(tmp_path_factory.mktemp("fresh"))
    ReaLModel.from_config(ModelConfig.from_hf_dict(TASK.model_config("tiny")), seed=5).save_pretrained(fresh)
    return warm, fresh


# ------------------------------------------------------------------ the single-process reference


def _hf(path: str) -> transformers.LlamaForCausalLM:
    return transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)


def _sequences(dataset: CompletionDataset, ids: list[int]) -> list[list[tuple[torch.Tensor, int]]]:
    """Per sample, (prompt + completion, prompt length) per completion."""
    return [[(torch.tensor(dataset.prompts[i] + c), len(dataset.prompts[i])) for c in dataset.completions[i]]
            for i in ids]


def _answer_logprobs(hf, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """log p(answer token | everything before it), one per answer token."""
    logits = hf(ids[None]).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, ids[1:, None])[prompt_len - 1:, 0]


def _sft_loss(hf, samples) -> torch.Tensor:
    return torch.cat([-_answer_logprobs(hf, ids, p) for seqs in samples for ids, p in seqs]).mean()


def _rw_loss(hf, head: torch.Tensor, samples) -> tuple[torch.Tensor, dict]:
    scores = torch.stack([torch.stack([hf.model(ids[None]).last_hidden_state[0, -1] @ head[0] for ids, _ in seqs])
                          for seqs in samples])
    chosen, rejected = scores[:, 0], scores[:, 1]
    stats = {"acc": (chosen > rejected).float().mean(), "chosen_score": chosen.mean(),
             "rejected_score": rejected.mean()}
    return -F.logsigmoid(chosen - rejected).mean(), stats


def _dpo_loss(actor, ref, samples, beta: float) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        ref_sums = torch.tensor([[_answer_logprobs(ref, ids, p).sum() for ids, p in seqs] for seqs in samples])
    pi_sums = torch.stack([torch.stack([_answer_logprobs(actor, ids, p).sum() for ids, p in seqs])
                           for seqs in samples])
    rewards = beta * (pi_sums - ref_sums)
    margin = rewards[:, 0] - rewards[:, 1]
    stats = {"reward_acc": (margin > 0).float().mean(), "reward_margin": margin.mean(),
             "chosen_reward": rewards[:, 0].mean(), "rejected_reward": rewards[:, 1].mean()}
    return -F.logsigmoid(margin).mean(), stats


def _adamw_step(params: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
    """OptimConfig(**OPTIM)'s update: global-norm clipping at 1, AdamW without weight decay."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
    torch.optim.AdamW(list(params.values()), weight_decay=0.0, **OPTIM).step()


def _eval_batches(dataset: CompletionDataset) -> list[list[int]]:
    """Master.evaluate's batches: consecutive ids, batch_size at a time."""
    return [list(range(a, a + BATCH)) for a in range(0, len(dataset), BATCH)]


# ------------------------------------------------------------------ comparing


def _saved(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _assert_same_update(saved: dict, expected: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> None:
    assert set(saved) == set(expected)
    for name, got in saved.items():
        update, diff = expected[name] - initial[name], got - expected[name]
        assert update.norm() > 0, f"{name} did not move; the comparison would be empty"
        assert diff.norm() <= 1e-3 * update.norm(), name
        assert diff.abs().max() <= 0.05 * LR, name


def _assert_stats(got: dict, prefix: str, expected: dict) -> None:
    for k, v in expected.items():
        assert got[f"{prefix}{k}"] == pytest.approx(float(v.detach()), rel=1e-5, abs=1e-6), k


def _run(models, algorithm, train: CompletionDataset, evaluation: CompletionDataset, save: str, out) -> tuple:
    with Master(models, algorithm, train, 2, eval_dataset=evaluation) as master:
        evaluated = master.evaluate()
        stats = master.step()
        master.save(save, str(out))
    return evaluated, stats


# ------------------------------------------------------------------ equivalence


def test_sft_step_matches_a_single_process_reference(lms, tmp_path):
    _, fresh = lms
    train, evaluation = CompletionDataset.sft_from_task(TASK, 32, seed=0), CompletionDataset.sft_from_task(TASK, 16, 1)
    sft = SFT(SFTConfig(BATCH, {"actor_train": TRAIN}, shuffle_seed=3))
    ids = sft.prompts_for_step(0, train)
    models = {"actor": ModelSpec("actor", path=fresh, optimizer=OptimConfig(**OPTIM))}
    evaluated, stats = _run(models, sft, train, evaluation, "actor", tmp_path / "actor")

    hf = _hf(fresh)
    with torch.no_grad():
        # Master.evaluate weighs its (equal) batches by samples; within a batch, tokens count.
        per_batch = [_sft_loss(hf, _sequences(evaluation, b)) for b in _eval_batches(evaluation)]
    assert evaluated["eval/loss"] == pytest.approx(float(sum(per_batch)) / len(per_batch), rel=1e-5)
    params = dict(hf.named_parameters())
    initial = {k: v.detach().clone() for k, v in params.items()}
    loss = _sft_loss(hf, _sequences(train, ids))
    _adamw_step(params, loss)
    assert stats["actor_train/loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    saved = _saved(tmp_path / "actor")
    _assert_same_update(saved, {k: params[k].detach() for k in saved}, initial)


def test_rw_step_matches_a_single_process_reference(lms, tmp_path):
    warm, _ = lms
    start = str(tmp_path / "rw0")   # the warm start with a new value head, as the workers load it
    ReaLModel.from_pretrained(warm, head="value").save_pretrained(start)
    train, evaluation = CompletionDataset.pairs_from_task(TASK, 32, 0), CompletionDataset.pairs_from_task(TASK, 16, 1)
    rw = RW(RWConfig(BATCH, {"rw_train": TRAIN}))
    models = {"reward": ModelSpec("reward", path=start, head="value", optimizer=OptimConfig(**OPTIM))}
    evaluated, stats = _run(models, rw, train, evaluation, "reward", tmp_path / "rw1")

    hf = _hf(start)
    head = load_file(f"{start}/value_head.safetensors")["value_head.weight"].requires_grad_()
    with torch.no_grad():
        per_batch = [_rw_loss(hf, head, _sequences(evaluation, b)) for b in _eval_batches(evaluation)]
    assert evaluated["eval/loss"] == pytest.approx(float(sum(loss for loss, _ in per_batch)) / len(per_batch), rel=1e-5)
    assert evaluated["eval/acc"] == pytest.approx(float(sum(s["acc"] for _, s in per_batch)) / len(per_batch))
    params = dict(hf.model.named_parameters(prefix="model"), **{"value_head.weight": head})
    initial = {k: v.detach().clone() for k, v in params.items()}
    loss, expected = _rw_loss(hf, head, _sequences(train, rw.prompts_for_step(0, train)))
    _adamw_step(params, loss)
    _assert_stats(stats, "rw_train/", dict(expected, loss=loss))
    saved = _saved(tmp_path / "rw1")
    _assert_same_update(saved, {k: params[k].detach() for k in saved}, initial)


def test_dpo_step_matches_a_single_process_reference(lms, tmp_path):
    warm, fresh = lms
    beta = 0.2
    train, evaluation = CompletionDataset.pairs_from_task(TASK, 32, 0), CompletionDataset.pairs_from_task(TASK, 16, 1)
    dpo = DPO(DPOConfig(BATCH, {"ref_inf": REF, "actor_train": TRAIN}, beta=beta))
    models = {"actor": ModelSpec("actor", path=fresh, optimizer=OptimConfig(**OPTIM)),
              "ref": ModelSpec("ref", path=warm)}
    evaluated, stats = _run(models, dpo, train, evaluation, "actor", tmp_path / "actor")

    actor, ref = _hf(fresh), _hf(warm)
    with torch.no_grad():
        per_batch = [_dpo_loss(actor, ref, _sequences(evaluation, b), beta) for b in _eval_batches(evaluation)]
    assert evaluated["eval/loss"] == pytest.approx(float(sum(loss for loss, _ in per_batch)) / len(per_batch), rel=1e-5)
    params = dict(actor.named_parameters())
    initial = {k: v.detach().clone() for k, v in params.items()}
    loss, expected = _dpo_loss(actor, ref, _sequences(train, dpo.prompts_for_step(0, train)), beta)
    _adamw_step(params, loss)
    _assert_stats(stats, "actor_train/", dict(expected, loss=loss))
    saved = _saved(tmp_path / "actor")
    _assert_same_update(saved, {k: params[k].detach() for k in saved}, initial)


# ------------------------------------------------------------------ learning


def _learn(models, algorithm, steps: int) -> tuple[dict, dict]:
    """Eval statistics before and after ``steps`` training steps."""
    train, evaluation = CompletionDataset.pairs_from_task(TASK, 1024, 0), CompletionDataset.pairs_from_task(TASK, 64, 1)
    with Master(models, algorithm, train, 2, eval_dataset=evaluation) as master:
        before = master.evaluate()
        for _ in range(steps):
            master.step()
        return before, master.evaluate()


def test_rw_learns_the_sort_preferences(lms):
    warm, _ = lms
    models = {"reward": ModelSpec("reward", path=warm, head="value", optimizer=OptimConfig(lr=1e-3))}
    rw = RW(RWConfig(64, {"rw_train": Allocation((0, 1), dp=2)}, n_minibatches=2, shuffle_seed=0))
    before, after = _learn(models, rw, 60)
    assert before["eval/acc"] < 0.6 and after["eval/acc"] > 0.8, (before, after)
    assert after["eval/loss"] < before["eval/loss"] - 0.2, (before, after)


def test_dpo_learns_the_sort_preferences(lms):
    warm, _ = lms
    models = {"actor": ModelSpec("actor", path=warm, optimizer=OptimConfig(lr=1e-3)),
              "ref": ModelSpec("ref", path=warm)}
    both = Allocation((0, 1), dp=2)
    dpo = DPO(DPOConfig(16, {"ref_inf": both, "actor_train": both}, beta=0.2, shuffle_seed=0))
    before, after = _learn(models, dpo, 40)
    # The actor starts as the reference: every implicit reward is 0, none is right.
    assert before["eval/reward_margin"] == pytest.approx(0.0, abs=1e-6) and before["eval/reward_acc"] == 0.0
    assert after["eval/reward_acc"] > 0.7 and after["eval/reward_margin"] > 0.5, (before, after)
    assert after["eval/loss"] < before["eval/loss"] - 0.15, (before, after)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("algorithm, match", [
    (lambda: SFT(SFTConfig(4, {})), r"SFT needs allocations for MFCs \['actor_train'\]"),
    (lambda: RW(RWConfig(4, {"actor_train": TRAIN})), r"RW needs allocations for MFCs \['rw_train'\]"),
    (lambda: DPO(DPOConfig(4, {"actor_train": TRAIN})), r"DPO needs allocations for MFCs \['ref_inf'\]"),
])
def test_missing_allocation_names_the_mfc(algorithm, match, lms):
    warm, _ = lms
    models = {"actor": ModelSpec("actor", path=warm, optimizer=OptimConfig()), "ref": ModelSpec("ref", path=warm)}
    with pytest.raises(AllocationError, match=match):
        Master(models, algorithm(), CompletionDataset.pairs_from_task(TASK, 8, 0), 2)
    assert not multiprocessing.active_children(), "a worker was started for an experiment that cannot run"


@pytest.mark.parametrize("make, match", [
    (lambda: DPOConfig(4, {}, beta=0.0), r"DPOConfig.beta must be a number > 0"),
    (lambda: DPOConfig(4, {}, beta=-1), r"DPOConfig.beta"),
    (lambda: SFTConfig(0, {}), r"SFTConfig.batch_size must be an integer >= 1"),
    (lambda: RWConfig(4, {}, n_minibatches=5), r"RWConfig.n_minibatches must be an integer in 1..batch_size \(4\)"),
    (lambda: RWConfig(4, [TRAIN]), r"RWConfig.allocations must be a dict"),
])
def test_bad_config_names_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("algorithm, dataset, match", [
    (RW(RWConfig(4, {})), CompletionDataset.sft_from_task(TASK, 8, 0),
     r"RW trains on given 2 completions per prompt.*got 1 per prompt"),
    (SFT(SFTConfig(4, {})), PromptDataset.from_task(TASK, 8, 0), r"SFT trains on given completions.*PromptDataset"),
])
def test_the_dataset_must_hold_what_the_loss_needs(algorithm, dataset, match):
    with pytest.raises(ValueError, match=match):
        algorithm.prompts_for_step(0, dataset)


def test_rw_needs_a_value_head(lms):
    warm, _ = lms
    models = {"reward": ModelSpec("reward", path=warm, optimizer=OptimConfig())}   # an LM head
    rw = RW(RWConfig(4, {"rw_train": Allocation((0,))}))
    with Master(models, rw, CompletionDataset.pairs_from_task(TASK, 8, 0), 1) as m:
        with pytest.raises(WorkerFailure, match=r"MFC 'rw_train' .*value head"):
            m.step()
