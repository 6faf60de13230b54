"""The runtime on a GPU: one worker per GPU over NCCL (on a one-GPU machine,
one worker); a GRPO step with reallocation-free allocation and a ReMax step
whose greedy baseline matches single-process greedy generation on the GPU."""
from __future__ import annotations

import math

import pytest
import torch

from python_tests.runtime import experiments as ex
from real_ext.algo import GRPO, GRPOConfig
from real_ext.data.prompts import PromptDataset
from real_ext.generation import GenerationConfig, generate
from real_ext.model import ReaLModel
from real_ext.model.train import OptimConfig
from real_ext.runtime import Allocation, Master, ModelSpec
from real_ext.tasks.warm_start import warm_start

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GEN = dict(max_new_tokens=8, seed=3, stop_token_ids=(ex.TASK.eos_id,))
ONE = Allocation((0,))


def test_grpo_and_remax_steps_on_a_gpu(tmp_path):
    sft = warm_start(ex.TASK, str(tmp_path / "sft"), steps=20)
    dataset = PromptDataset.from_task(ex.TASK, 16, seed=0)
    models = {"actor": ModelSpec("actor", path=sft, optimizer=OptimConfig(lr=3e-4)), "ref": ModelSpec("ref", path=sft)}
    grpo = GRPO(GRPOConfig(batch_size=8, group_size=4, generation=GEN, reward="task:sort", beta=0.01,
                           allocations={k: ONE for k in ("actor_gen", "reward_fn", "ref_inf", "actor_train")}))
    with Master(models, grpo, dataset, 1, device="cuda") as master:
        stats = [master.step() for _ in range(2)]
    assert all(math.isfinite(s["actor_train/loss"]) and s["actor_gen/sequences"] == 32 for s in stats)

    remax = GRPO(GRPOConfig(batch_size=16, group_size=1, generation=GEN, reward="task:sort",
                            allocations={k: ONE for k in ("actor_gen", "reward_fn", "actor_train")}), remax=True)
    with Master({"actor": models["actor"]}, remax, dataset, 1, device="cuda") as master:
        greedy = master.step()["greedy_reward/mean"]
    out = generate(ReaLModel.from_pretrained(sft, device="cuda"), dataset.prompts,
                   GenerationConfig(**dict(GEN, greedy=True)))
    expected = [ex.TASK.reward(dataset.prompts[p], ids) for p, ids in zip(out.prompt_index, out.output_ids)]
    assert greedy == pytest.approx(sum(expected) / len(expected), abs=1e-9)
