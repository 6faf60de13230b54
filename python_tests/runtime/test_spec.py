"""Experiments that cannot run are rejected before any worker starts, with a
message naming the MFC (or model, or key) and the fix; the dataflow graph and
the data-transfer planner on their own."""
from __future__ import annotations

import multiprocessing

import pytest

from python_tests.runtime import experiments as ex
from real_ext.algo import GRPO, GRPOConfig
from real_ext.runtime import Allocation, AllocationError, Master, MFCSpec
from real_ext.runtime.dfg import DFG
from real_ext.runtime.transfer import plan_transfers


def _reject(allocations=None, n_workers=4, algorithm=None, models=None, match="", **master_kw):
    algorithm = algorithm or ex.ppo(allocations)
    with pytest.raises(AllocationError, match=match):
        Master(models or ex.ppo_models(), algorithm, ex.prompts(), n_workers, **master_kw)
    assert not multiprocessing.active_children(), "a worker was started for an experiment that cannot run"


def _with(**changes) -> dict:
    allocations = ex.four_workers()
    allocations.update(changes)
    return allocations


def test_mesh_size_must_equal_dp_tp_pp():
    _reject(_with(critic_inf=Allocation((2, 3), dp=2, tp=2)), match=r"MFC 'critic_inf'.*dp\*tp\*pp")


def test_mesh_outside_the_world():
    _reject(_with(ref_inf=Allocation((3, 4), pp=2)), match=r"MFC 'ref_inf'.*workers \[4\].*4 workers")


def test_tp_must_divide_heads():
    # The tiny model has 4 heads.
    _reject(_with(actor_train=Allocation((0, 1, 2), tp=3)), match=r"MFC 'actor_train'.*tp=3")


def test_pp_beyond_layers():
    _reject(_with(reward_inf=Allocation((0, 1, 2, 3, 4), pp=5)), n_workers=5, match=r"MFC 'reward_inf'.*pp=5")


def test_batch_not_divisible_by_dp():
    _reject(_with(actor_gen=Allocation((0, 1, 2), dp=3)), match=r"MFC 'actor_gen'.*16 sequences is not divisible by dp=3")


def test_too_few_sequences_for_the_minibatches():
    alloc = _with(critic_train=Allocation((0, 1, 2, 3), dp=4))
    _reject(algorithm=ex.ppo(alloc, batch_size=4), match=r"MFC 'critic_train'.*1 sequences per data-parallel rank "
                                                          r"cannot make 2 mini-batches")


def test_missing_allocation_names_the_mfc():
    alloc = ex.four_workers()
    del alloc["critic_train"]
    _reject(alloc, match=r"allocation for MFC 'critic_train'")


def test_training_a_model_without_optimizer():
    models = ex.ppo_models()
    models["critic"].optimizer = None
    _reject(ex.four_workers(), models=models, match=r"MFC 'critic_train'.*'critic' trains but has no optimizer")


def test_unknown_reward_rule():
    grpo = GRPO(GRPOConfig(batch_size=4, group_size=2, generation=dict(max_new_tokens=4),
                           allocations={k: Allocation((0,)) for k in ("actor_gen", "reward_fn", "actor_train")},
                           reward="task:no_such_task"))
    _reject(algorithm=grpo, models={"actor": ex.ppo_models()["actor"]}, n_workers=1, match=r"no built-in task")


def test_missing_checkpoint_names_the_model():
    models = ex.ppo_models()
    models["ref"].config, models["ref"].path = None, "/nonexistent/checkpoint"
    _reject(ex.four_workers(), models=models, match=r"model 'ref': no config.json at '/nonexistent/checkpoint'")


def test_offload_of_a_trained_model():
    _reject(ex.four_workers(), offload=("actor",), match=r"offload names model 'actor', which trains")


def test_dfg_orders_mfcs_and_finds_dataset_keys():
    a = Allocation((0,))
    mfcs = [MFCSpec("train", "m", "train_step", ("ids", "score"), (), a),
            MFCSpec("score", "r", "inference", ("ids",), ("score",), a),
            MFCSpec("gen", "m", "generate", ("prompt",), ("ids",), a)]
    dfg = DFG.build(mfcs)
    assert [m.name for m in dfg.mfcs] == ["gen", "score", "train"]
    assert dfg.dataset_keys == {"prompt"}
    assert dfg.parents(mfcs[0]) == ["gen", "score"]


def test_dfg_rejects_cycles_and_double_producers():
    a = Allocation((0,))
    with pytest.raises(AllocationError, match="cycle"):
        DFG.build([MFCSpec("x", "m", "inference", ("b",), ("a",), a), MFCSpec("y", "m", "inference", ("a",), ("b",), a)])
    with pytest.raises(AllocationError, match="'a' is produced by both 'x' and 'y'"):
        DFG.build([MFCSpec("x", "m", "inference", (), ("a",), a), MFCSpec("y", "m", "inference", (), ("a",), a)])


def test_transfer_plan_moves_only_what_is_missing_and_spreads_senders():
    # Samples 0-3 of key "k" are held by both workers 0 and 1; worker 2 needs all of them,
    # worker 0 needs sample 3 and already has it.
    holders = {(s, "k"): {0, 1} for s in range(4)}
    pairs = plan_transfers({2: [0, 1, 2, 3], 0: [3]}, ["k"], holders)
    sent = {}
    for src, dst, sids, keys in pairs:
        assert dst == 2 and keys == ["k"]
        sent[src] = sids
    assert sorted(sent[0] + sent[1]) == [0, 1, 2, 3] and len(sent[0]) == len(sent[1]) == 2


def test_transfer_plan_sends_each_sample_only_the_keys_it_lacks():
    # Worker 1 holds "a" and "b" of sample 0 and "a" of sample 1; worker 2 already has "b" of sample 1.
    holders = {(0, "a"): {1}, (0, "b"): {1}, (1, "a"): {1}, (1, "b"): {2}}
    assert plan_transfers({2: [0, 1]}, ["a", "b"], holders) == [(1, 2, [1], ["a"]), (1, 2, [0], ["a", "b"])]


def test_transfer_plan_names_missing_data():
    with pytest.raises(KeyError, match="no worker holds key 'k' of sample 5"):
        plan_transfers({0: [5]}, ["k"], {})
