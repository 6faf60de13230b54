"""The training step against torch.optim.AdamW and transformers' schedules,
and its equivalences: micro-batching, activation checkpointing, ZeRO-1."""
import copy
import math

import pytest
import torch
import transformers

from real_ext.model import ModelConfig, ReaLModel
from real_ext.model.checkpoint import full_state_dict
from real_ext.model.train import OptimConfig, Trainer, lr_at
from python_tests.distributed import run_workers
from python_tests.model.parallel_workers import LLAMA, loss_fn, make_batch

LM_WEIGHT = dict(loss_weight=lambda mb: mb.n_tokens - mb.n_seqs)


def _model(dtype=torch.float32):
    return ReaLModel.from_config(ModelConfig.from_hf_dict(LLAMA), seed=5, dtype=dtype)


def test_step_matches_torch_adamw():
    cfg = OptimConfig(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, grad_clip=0.3)
    ours = _model()
    ref = copy.deepcopy(ours)
    trainer = Trainer(ours, cfg)
    decay = [p for n, p in ref.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in ref.named_parameters() if p.dim() == 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    for step in range(3):
        batch = make_batch(seed=step)
        stats = trainer.train_step(batch, loss_fn, **LM_WEIGHT)
        hidden = ref.forward_stage(batch.input_ids, ref.packed_info(batch.cu_seqlens))
        loss, _ = loss_fn(ref, hidden, batch)
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.3)
        opt.step()
        assert math.isclose(stats["loss"], loss.item(), rel_tol=1e-6)
        assert math.isclose(stats["grad_norm"], norm.item(), rel_tol=1e-5)
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert (a - b).abs().max() < 1e-2 * cfg.lr, name  # see test_parallel on Adam's eps sensitivity


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedules_match_transformers(schedule):
    cfg = OptimConfig(lr=1.0, schedule=schedule, warmup_steps=5, total_steps=50)
    make = (transformers.get_linear_schedule_with_warmup if schedule == "linear"
            else transformers.get_cosine_schedule_with_warmup)
    sched = make(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 5, 50)
    hf = [sched.lr_lambdas[0](s) for s in range(51)]
    # After warm-up the curves are the same (past total_steps ours stays at its
    # floor where HF's cosine rises again); during warm-up ours starts at lr/warmup, not 0.
    for s in range(5, 51):
        assert math.isclose(lr_at(cfg, s), hf[s], abs_tol=1e-12), s
    assert lr_at(cfg, 70) == lr_at(cfg, 50) == 0.0
    assert [lr_at(cfg, s) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert lr_at(OptimConfig(lr=2.0, schedule="cosine", total_steps=10, min_lr_ratio=0.1), 10) == pytest.approx(0.2)


def _one_step(n_microbatches=1, checkpointing=False):
    model = _model()
    model.activation_checkpointing = checkpointing
    trainer = Trainer(model, OptimConfig(lr=1e-3, grad_clip=1.0))
    stats = trainer.train_step(make_batch(), loss_fn, n_microbatches=n_microbatches, **LM_WEIGHT)
    return stats, model.flat.clone()


def test_microbatches_and_checkpointing_do_not_change_the_step():
    ref_stats, ref_flat = _one_step()
    for kwargs in (dict(n_microbatches=3), dict(checkpointing=True)):
        stats, flat = _one_step(**kwargs)
        assert math.isclose(stats["grad_norm"], ref_stats["grad_norm"], rel_tol=1e-5), kwargs
        assert (flat - ref_flat).abs().max() < 1e-5, kwargs


def test_bfloat16_parameters_with_float32_master_weights():
    model = _model(torch.bfloat16)
    trainer = Trainer(model, OptimConfig(lr=1e-3))
    before = trainer.master.clone()
    stats = trainer.train_step(make_batch(), loss_fn, **LM_WEIGHT)
    assert trainer.master.dtype == torch.float32 and math.isfinite(stats["loss"])
    assert torch.equal(model.flat, trainer.master.to(torch.bfloat16))
    # float32 master weights keep updates far smaller than bfloat16's resolution.
    moved = (trainer.master - before).abs()
    assert moved.max() < 2e-3 and moved.min() < 1e-4


def _zero1_worker(rank, world_size, zero1):
    from real_ext.parallel import ParallelLayout
    model = ReaLModel.from_config(ModelConfig.from_hf_dict(LLAMA), seed=5,
                                  layout=ParallelLayout((0, 1), dp=2))
    trainer = Trainer(model, OptimConfig(lr=1e-3, weight_decay=0.1, zero1=zero1))
    for step in range(2):
        share = make_batch(seed=step).split(2)[rank]
        trainer.train_step(share, loss_fn, **LM_WEIGHT)
    return full_state_dict(model), trainer.exp_avg.numel()


def test_zero1_matches_replicated_optimizer():
    plain = run_workers(_zero1_worker, 2, False)
    sharded = run_workers(_zero1_worker, 2, True)
    assert sharded[0][1] < plain[0][1]  # optimizer state really is sharded
    for name, ref in plain[0][0].items():
        assert torch.equal(sharded[0][0][name], ref), name
