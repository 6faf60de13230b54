"""The execution-plan simulator: the runtime's ordering rules hold in every
simulated timeline (one thing at a time per worker, parents first, parameter
versions), memory limits make a plan infeasible, reallocation and data
transfer costs come from the real planners, CPU core sharing slows concurrent
calls, and the timeline draws."""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from real_ext.algo import DPO, GRPO, PPO, RW, SFT, DPOConfig, GRPOConfig, PPOConfig, RWConfig, SFTConfig
from real_ext.model.config import ModelConfig
from real_ext.plan import realloc_cost
from real_ext.plan.cost import AnalyticCost, ModelInfo, Strategy
from real_ext.plan.hardware import parse_cluster
from real_ext.plan.realloc_cost import (Holdings, _spread, comm_time, needs_of, realloc_time, realloc_traffic,
                                       transfer_pairs, transfer_time)
from real_ext.plan.simulate import simulate, works_for
from real_ext.realloc import Layout, plan
from real_ext.runtime.spec import Allocation
from real_ext.runtime.transfer import plan_transfers
from real_ext.tasks import get_task

LLAMA_7B = dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                max_position_embeddings=4096, rms_norm_eps=1e-5)
LLAMA_70B = dict(LLAMA_7B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8)
PPO_MFCS = ("actor_gen", "reward_inf", "ref_inf", "critic_inf", "actor_train", "critic_train")
ALL8 = tuple(range(8))
BATCH = 64


@pytest.fixture(scope="module")
def cost():
    return AnalyticCost(parse_cluster("1x8xH100"))


def _models(config: dict) -> dict[str, ModelInfo]:
    c = ModelConfig.from_hf_dict(config)
    return {"actor": ModelInfo(c, trains=True), "critic": ModelInfo(c, "value", trains=True),
            "ref": ModelInfo(c), "reward": ModelInfo(c, "value")}


MODELS = _models(LLAMA_7B)
WORKS = works_for("ppo", BATCH, 256, 256, n_minibatches=4)
SYMMETRIC = {n: Allocation(ALL8, 1, 8, 1, 4) for n in PPO_MFCS}
# Generation data parallel, reference and reward side by side on half the workers each.
MIXED = dict(SYMMETRIC, actor_gen=Allocation(ALL8, 4, 2, 1), ref_inf=Allocation((0, 1, 2, 3), 1, 4, 1),
             reward_inf=Allocation((4, 5, 6, 7), 1, 4, 1))


def _ppo(allocations):
    return PPO(PPOConfig(batch_size=BATCH, generation={"max_new_tokens": 256}, allocations=allocations)).mfcs()


def _run(allocations, cost, **kw):
    return simulate(_ppo(allocations), MODELS, WORKS, allocations, cost, **kw)


def _calls(result, kind: str) -> dict[str, list[tuple[float, float]]]:
    """name -> the (start, end) of each call of that kind, in time order (one per iteration)."""
    out: dict[str, set] = {}
    for _, k, name, start, end in result.spans:
        if k == kind:
            out.setdefault(name, set()).add((start, end))
    return {name: sorted(v) for name, v in out.items()}


@pytest.mark.parametrize("barrier", [True, False])
def test_runtime_order_holds(cost, barrier):
    r = _run(MIXED, cost, step_barrier=barrier)
    assert r.feasible, r.reason
    by_worker: dict[int, list] = {}
    for w, _, _, start, end in r.spans:
        by_worker.setdefault(w, []).append((start, end))
    for spans in by_worker.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-12 for a, b in zip(spans, spans[1:]))
    runs, reallocs, transfers = _calls(r, "run"), _calls(r, "realloc"), _calls(r, "transfer")
    parents = {"actor_gen": [], "reward_inf": ["actor_gen"], "ref_inf": ["actor_gen"], "critic_inf": ["actor_gen"]}
    parents["actor_train"] = parents["critic_train"] = ["actor_gen", "reward_inf", "ref_inf", "critic_inf"]
    for t in range(3):
        for name, ps in parents.items():
            start = runs[name][t][0]
            assert all(runs[p][t][1] <= start for p in ps)
            if f"{name}:data" in transfers:
                assert transfers[f"{name}:data"][t][1] <= start
        assert reallocs["actor:realloc"][t][1] <= runs["actor_gen"][t][0]
        if t:   # parameter versions: generation of step t uses the actor trained in step t - 1
            assert runs["actor_train"][t - 1][1] <= runs["actor_gen"][t][0]
            assert runs["critic_train"][t - 1][1] <= runs["critic_inf"][t][0]
    assert len(r.iteration_times) == 3
    assert r.iteration_time == pytest.approx(sum(r.iteration_times[1:]) / 2)
    assert all(0 < u <= 1 for u in r.utilization.values())


def test_without_the_step_barrier_only_parameter_versions_wait(cost):
    """Actor on workers 0-3, critic and reward on 4-7, the critic training
    slower (a 4-stage pipeline of one micro-batch): without the barrier the
    next step's generation overlaps this step's critic training."""
    half, other = (0, 1, 2, 3), (4, 5, 6, 7)
    split = {"actor_gen": Allocation(half, 4), "actor_train": Allocation(half, 1, 4, 1, 4),
             "ref_inf": Allocation(half, 1, 4), "critic_inf": Allocation(other, 1, 4),
             "critic_train": Allocation(other, 1, 1, 4, 1), "reward_inf": Allocation(other, 1, 4)}
    barrier, free = _run(split, cost), _run(split, cost, step_barrier=False)
    assert barrier.feasible and free.feasible
    assert free.iteration_time < barrier.iteration_time
    runs = _calls(free, "run")
    (c0, c1), (g0, g1) = runs["critic_train"][0], runs["actor_gen"][1]
    assert runs["actor_train"][0][1] <= g0 and max(c0, g0) < min(c1, g1)


def test_memory_beyond_the_hardware_is_infeasible(cost):
    models = _models(LLAMA_70B)
    one = {n: Allocation((0,)) for n in PPO_MFCS}
    r = simulate(_ppo(one), models, WORKS, one, cost)
    assert not r.feasible
    assert "worker 0" in r.reason and "actor_train" in r.reason and "GiB" in r.reason
    # Resident fits, the run does not: the reason names the MFC that overflows.
    whole = works_for("ppo", BATCH, 256, 256)   # one mini-batch of one micro-batch: every activation at once
    one_mb = {n: Allocation(ALL8, 1, 8, 1, 1) for n in PPO_MFCS}
    r = simulate(_ppo(one_mb), MODELS, whole, one_mb, cost)
    assert not r.feasible and "while running actor_train" in r.reason
    assert max(r.peak_memory.values()) > cost.hardware.mem_bytes
    assert _run(SYMMETRIC, cost).feasible


def test_symmetric_plan_moves_no_parameters(cost):
    r = _run(SYMMETRIC, cost)
    assert {kind for _, kind, *_ in r.spans} == {"run"}   # one layout everywhere: no reallocation, no transfer


def test_realloc_spans_take_realloc_time(cost):
    r = _run(MIXED, cost)
    expected = realloc_time(MODELS["actor"], SYMMETRIC["actor_train"], MIXED["actor_gen"], cost)
    assert expected > 0
    spans = _calls(r, "realloc")["actor:realloc"]
    assert len(spans) == 3
    # The copy's model is built first; every operation also pays the runtime's
    # fixed cost of a message and a reply.
    gen = MIXED["actor_gen"]
    built = cost.build_time(MODELS["actor"], Strategy(gen.dp, gen.tp, gen.pp))
    assert built == cost.hardware.build_fixed + 32 * cost.hardware.build_per_block   # 32 blocks, pp=1
    expected += built + cost.hardware.op_latency
    assert all(end - start == pytest.approx(expected, rel=1e-9) for start, end in spans)
    frees = _calls(r, "free")["actor:free"]
    assert [s for s, _ in frees] == [e for _, e in _calls(r, "run")["actor_gen"]]


def test_disjoint_meshes_run_at_once(cost):
    runs = _calls(_run(MIXED, cost), "run")
    (a0, a1), (b0, b1) = runs["ref_inf"][0], runs["reward_inf"][0]
    assert max(a0, b0) < min(a1, b1)


def test_shared_cores_slow_concurrent_calls(cost):
    shared = AnalyticCost(dataclasses.replace(cost.hardware, shared_cores=4))
    runs = _calls(_run(MIXED, shared), "run")
    for name, model in (("ref_inf", "ref"), ("reward_inf", "reward")):
        a = MIXED[name]
        alone = shared.mfc_time(MODELS[model], WORKS[name], Strategy(a.dp, a.tp, a.pp, a.n_microbatches))
        start, end = runs[name][0]
        assert end - start > 1.2 * alone   # 8 busy workers on 4 cores: half speed while both run
    # Calls on all 8 workers run alone, at half speed throughout.
    a = SYMMETRIC["actor_train"]
    alone = shared.mfc_time(MODELS["actor"], WORKS["actor_train"], Strategy(a.dp, a.tp, a.pp, a.n_microbatches))
    start, end = runs["actor_train"][0]
    assert end - start == pytest.approx(2 * (alone + shared.hardware.op_latency), rel=1e-9)
    # Without sharing, runs take what the cost model says (and the operation's fixed cost).
    start, end = _calls(_run(MIXED, cost), "run")["actor_train"][0]
    assert end - start == pytest.approx(alone + cost.hardware.op_latency, rel=1e-9)


def _sort_model(dtype="float32") -> ModelInfo:
    return ModelInfo(ModelConfig.from_hf_dict(get_task("sort").model_config("tiny")), dtype=dtype)


@pytest.mark.parametrize("src,dst", [(Allocation(ALL8, 2, 2, 2), Allocation(ALL8, 8, 1, 1)),
                                     (Allocation((0, 1, 2, 3), 1, 2, 2), Allocation((2, 3, 4, 5, 6, 7), 3, 2, 1)),
                                     (Allocation((0, 1), 1, 1, 2), Allocation((4, 5, 6, 7), 2, 2, 1))])
def test_realloc_bytes_are_the_planners(cost, src, dst):
    model = _sort_model("bfloat16")
    p = plan(*[Layout.from_config(model.config, list(a.mesh), a.dp, a.tp, a.pp, dtype=torch.bfloat16,
                                  workers_per_node=8) for a in (src, dst)])
    traffic = realloc_traffic(model, src, dst, 8)
    assert traffic.exact and traffic.bytes_moved == p.bytes_moved > 0
    sent: dict[int, int] = {}
    for (a, _), n in traffic.pair_bytes.items():
        sent[a] = sent.get(a, 0) + n
    assert sent == p.send_bytes_per_rank
    # The time is that of the planner's own transfers.
    pairs, local = {}, {}
    t = p.tensor
    for s, d, n in zip(t[:, 0].tolist(), t[:, 1].tolist(), ((t[:, 4] - t[:, 3]) * (t[:, 6] - t[:, 5]) * 2).tolist()):
        if s == d:
            local[s] = local.get(s, 0) + n
        else:
            pairs[(s, d)] = pairs.get((s, d), 0) + n
    assert realloc_time(model, src, dst, cost) == pytest.approx(comm_time(pairs, cost, local), rel=1e-12)
    assert comm_time(pairs, cost, local) > 0
    assert realloc_time(model, src, src, cost) == 0


@pytest.mark.parametrize("src,dst", [(Allocation(ALL8, 2, 2, 2), Allocation(ALL8, 8, 1, 1)),
                                     (Allocation(ALL8, 1, 2, 4), Allocation(ALL8, 2, 1, 4))])
def test_reduced_plan_keeps_every_byte(monkeypatch, src, dst):
    """Planning one block per (source stage, destination stage) pair and
    weighting it moves exactly the bytes of the full plan."""
    model = ModelInfo(ModelConfig.from_hf_dict(dict(get_task("sort").model_config("tiny"), num_hidden_layers=8)))
    realloc_cost._traffic.cache_clear()
    full = realloc_traffic(model, src, dst, 4)
    monkeypatch.setattr(realloc_cost, "REDUCE_ABOVE", 0)
    realloc_cost._traffic.cache_clear()
    reduced = realloc_traffic(model, src, dst, 4)
    realloc_cost._traffic.cache_clear()
    assert full.exact and not reduced.exact
    assert reduced.bytes_moved == full.bytes_moved > 0
    assert sum(reduced.local_bytes.values()) == sum(full.local_bytes.values())


@pytest.mark.parametrize("src,dst,inference", [(Allocation(ALL8, 4, 2, 1), Allocation(ALL8, 1, 8, 1), False),
                                               (Allocation(ALL8, 2, 2, 2), Allocation((0, 1, 2, 3), 4, 1, 1), True),
                                               (Allocation((0, 1), 2), Allocation((4, 5, 6), 3), False)])
def test_data_transfer_follows_the_runtime(cost, src, dst, inference):
    """transfer_pairs sends what runtime.transfer.plan_transfers sends for an even split."""
    n = 24
    held = Holdings.of(src, n, last_stage_only=inference)
    ours, received = transfer_pairs(needs_of(dst, n), [(held, 1)])
    holders = {}
    for first, stop, workers in held.pieces:
        for sid in range(first, stop):
            holders[(sid, "k")] = set(workers)
    needs = {w: list(range(*r)) for w, r in needs_of(dst, n).items()}
    theirs: dict = {}
    for s, d, sids, _ in plan_transfers(needs, ["k"], holders):
        theirs[(s, d)] = theirs.get((s, d), 0) + len(sids)
    assert {pair: m.nbytes for pair, m in ours.items()} == theirs
    assert all(m.n_keys == 1 and m.n_samples == m.nbytes for m in ours.values())
    # Afterwards every destination worker holds its share too, as the master records.
    after = held.plus(received)
    assert all(w in after.holders(*share)[0][2] for w, share in needs_of(dst, n).items())
    assert transfer_time(100, n, src, src, cost) == 0


def test_spread_is_the_runtimes_greedy():
    """Water-filling gives what plan_transfers' one-at-a-time choice gives."""
    rng = random.Random(0)
    for _ in range(2000):
        workers = rng.sample(range(20), rng.randint(1, 8))
        load = {w: rng.randint(0, 6) for w in rng.sample(range(20), rng.randint(0, 10))}
        n = rng.randint(0, 30)
        expected_load, given = dict(load), {}
        for _ in range(n):
            w = min(sorted(workers), key=lambda x: (expected_load.get(x, 0), x))
            expected_load[w] = expected_load.get(w, 0) + 1
            given[w] = given.get(w, 0) + 1
        assert _spread(n, workers, load) == sorted(given.items())
        assert load == expected_load


def test_transfer_time_of_one_message(cost):
    """One key of 4 samples: a header (two messages) and the key's message,
    plus the host work per transfer and per sample."""
    t = transfer_time(1000, 4, Allocation((0,)), Allocation((1,)), cost)
    hw = cost.hardware
    assert t == pytest.approx(cost.p2p_time(4000, 0, 1) + 2 * hw.latency + hw.transfer_fixed
                              + 4 * hw.transfer_per_sample)


def test_timeline_png(cost, tmp_path):
    r = _run(MIXED, cost)
    events = r.trace_events()
    assert sum(e["cat"] == "clear" for e in events) == 3 * 8
    path = r.draw(str(tmp_path / "sim.png"), "simulated PPO")
    assert (tmp_path / "sim.png").stat().st_size > 10_000 and path.endswith("sim.png")


def _graphs():
    alloc = {n: Allocation(ALL8, 8) for n in PPO_MFCS + ("reward_fn", "rw_train")}
    grpo = GRPOConfig(batch_size=BATCH, group_size=4, generation={"max_new_tokens": 64}, allocations=alloc,
                      reward="task:sort", beta=0.1)
    return {"ppo": _ppo(alloc), "grpo": GRPO(grpo).mfcs(), "remax": GRPO(grpo, remax=True).mfcs(),
            "sft": SFT(SFTConfig(BATCH, alloc)).mfcs(), "rw": RW(RWConfig(BATCH, alloc)).mfcs(),
            "dpo": DPO(DPOConfig(BATCH, alloc)).mfcs()}


@pytest.mark.parametrize("kind", ["ppo", "grpo", "remax", "sft", "rw", "dpo"])
def test_works_for_every_graph(cost, kind):
    mfcs = _graphs()[kind]
    works = works_for(kind, BATCH, 64, 64, group_size=4, n_minibatches=2)
    assert {m.name for m in mfcs} <= set(works)
    if kind == "grpo":
        assert works["actor_gen"].n_seqs == works["actor_train"].n_seqs == 4 * BATCH
    # Generation data parallel on all workers, everything else tensor parallel: one reallocation
    # per step (ReMax's sampled and greedy generation share it).
    allocations = {m.name: Allocation(ALL8, 8, 1, 1) if m.interface == "generate" else Allocation(ALL8, 1, 8, 1)
                   for m in mfcs}
    models = dict(MODELS, reward=ModelInfo(MODELS["reward"].config, "value", trains=kind == "rw"))
    r = simulate(mfcs, models, works, allocations, cost, n_iterations=2)
    assert r.iteration_time > 0
    reallocs = _calls(r, "realloc")
    assert [len(v) for v in reallocs.values()] == ([2] if kind in ("ppo", "grpo", "remax") else [])


def test_bad_plans_are_named(cost):
    with pytest.raises(ValueError, match="no allocation for MFCs"):
        simulate(_ppo(SYMMETRIC), MODELS, WORKS, {"actor_gen": SYMMETRIC["actor_gen"]}, cost)
    outside = dict(SYMMETRIC, ref_inf=Allocation((8, 9), 2))
    with pytest.raises(ValueError, match="ref_inf.*outside"):
        simulate(_ppo(SYMMETRIC), MODELS, WORKS, outside, cost)
