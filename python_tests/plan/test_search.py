"""The plan search: candidate meshes and strategies, baselines, and the
annealing's guarantees (never infeasible, never worse than the baselines it
starts from), on the analytic cost model of GPU clusters; `real-ext plan`."""
import time

import pytest

from real_ext.algo import PPO, PPOConfig
from real_ext.model.config import ModelConfig
from real_ext.plan.cost import AnalyticCost, MFCWork, ModelInfo, Strategy
from real_ext.plan.hardware import parse_cluster
from real_ext.plan.search import (PlanSearchError, Problem, candidate_meshes, candidate_strategies, disjoint,
                                  search, symmetric)
from real_ext.plan.simulate import works_for
from real_ext.runtime.spec import Allocation

LLAMA_7B = dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
NAMES = ("actor_gen", "reward_inf", "ref_inf", "critic_inf", "actor_train", "critic_train")


def ppo_problem(cluster: str, config=LLAMA_7B, batch=128, gen_len=256, **model_options) -> Problem:
    cfg = ModelConfig.from_hf_dict(config)
    models = {"actor": ModelInfo(cfg, "lm", trains=True, **model_options),
              "critic": ModelInfo(cfg, "value", trains=True, **model_options),
              "ref": ModelInfo(cfg, "lm"), "reward": ModelInfo(cfg, "value")}
    ppo = PPO(PPOConfig(batch_size=batch, generation=dict(max_new_tokens=gen_len), n_minibatches=2,
                        allocations={n: Allocation((0,)) for n in NAMES}))
    return Problem(ppo.mfcs(), models, works_for("ppo", batch, 128, gen_len, n_minibatches=2),
                   AnalyticCost(parse_cluster(cluster)))


def test_candidate_meshes_are_aligned_powers_of_two():
    meshes = candidate_meshes(parse_cluster("2x8xH100"))
    assert (0,) in meshes and tuple(range(8, 16)) in meshes and tuple(range(16)) in meshes
    assert tuple(range(4, 8)) in meshes and tuple(range(2, 6)) not in meshes   # unaligned slices are not meshes
    for mesh in meshes:
        n = len(mesh)
        assert n & (n - 1) == 0 and mesh == tuple(range(mesh[0], mesh[0] + n)) and mesh[0] % min(n, 8) == 0


def test_candidate_strategies_respect_the_model_and_batch():
    cfg = ModelConfig.from_hf_dict(dict(LLAMA_7B, num_attention_heads=32, num_key_value_heads=8))
    work = MFCWork("train_step", n_seqs=64, prompt_len=128, gen_len=128, n_minibatches=2)
    hw = parse_cluster("2x8xH100")
    options = candidate_strategies(16, ModelInfo(cfg, trains=True), work, hw)
    assert options
    for s in options:
        assert s.dp * s.tp * s.pp == 16 and s.tp <= 8 and 32 % s.tp == 0
        assert 64 % s.dp == 0 and s.n_microbatches >= s.pp
    assert Strategy(2, 8, 1, 1) in options and not any(s.tp == 16 for s in options)


def test_search_is_feasible_and_never_worse_than_the_baselines():
    problem = ppo_problem("1x8xH100")
    found = search(problem, time_budget_s=6, seed=1)
    assert found.result.feasible
    for name, baseline in found.baselines.items():
        if baseline is not None:
            assert baseline[1].feasible
            assert found.result.iteration_time <= baseline[1].iteration_time + 1e-9, name
    # The returned plan simulates to the returned result.
    again = problem.evaluate(found.allocations)
    assert again.iteration_time == pytest.approx(found.result.iteration_time)


def test_baselines_have_their_shapes():
    problem = ppo_problem("1x8xH100")
    sym, _ = symmetric(problem)
    assert {a.mesh for a in sym.values()} == {tuple(range(8))}
    assert len({(a.dp, a.tp, a.pp) for name, a in sym.items() if name != "reward_fn"}) == 1
    dis = disjoint(problem)
    if dis is not None:
        meshes = {}
        for m in problem.mfcs:
            meshes.setdefault(m.model, set()).add(dis[0][m.name].mesh)
        owned = [set(next(iter(v))) for v in meshes.values()]
        assert all(len(v) == 1 for v in meshes.values())   # every model's MFCs on its own mesh
        assert all(not (a & b) for i, a in enumerate(owned) for b in owned[i + 1:])   # meshes are disjoint


def test_nothing_fits_is_a_clear_error():
    # Four 70B models with full activations on one 8-GPU node cannot fit.
    big = dict(LLAMA_7B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
               num_key_value_heads=8)
    with pytest.raises(PlanSearchError, match="memory"):
        search(ppo_problem("1x8xH100", big, batch=512, gen_len=896), time_budget_s=2)


@pytest.mark.slow
def test_four_70b_models_on_128_gpus_within_60_s():
    big = dict(LLAMA_7B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
               num_key_value_heads=8)
    t0 = time.time()
    found = search(ppo_problem("16x8xH100", big, batch=512, gen_len=896, activation_checkpointing=True),
                   time_budget_s=45)
    assert time.time() - t0 < 60 and found.result.feasible
