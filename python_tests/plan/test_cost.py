"""The plan search's cost model: analytic numbers against hand-computed ones,
memory against the tensors real_ext actually keeps, monotonicity, cluster
parsing, and a real (small) profile whose predictions match fresh timings."""
import dataclasses
import json
import math

import pytest
import torch

from real_ext.generation import GenerationConfig
from real_ext.generation.engine import new_cache
from real_ext.model import ModelConfig, ReaLModel
from real_ext.model.train import OptimConfig, Trainer
from real_ext.plan.cost import (AnalyticCost, Curve, MFCWork, ModelInfo, ProfiledCost, Strategy,
                                activation_bytes_per_token, block_flops, forward_flops, kv_cache_tokens,
                                pipeline_bubble)
from real_ext.plan.hardware import PRESETS, Hardware, parse_cluster
from real_ext.model.shards import ModelShards
from real_ext.parallel.layout import ParallelLayout
from real_ext.plan.profile import packed_batch, run_profile, tp_rank_config
from real_ext.tasks import get_task

LLAMA_7B = ModelConfig.from_hf_dict(dict(
    model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096))
LLAMA_7B_PARAMS = 6_738_415_616   # Meta's LLaMA-7B, embeddings and untied head included
TINY = ModelConfig.from_hf_dict(get_task("sort").model_config("tiny"))
SMALL = ModelConfig.from_hf_dict(get_task("sort").model_config("small"))
# GQA: 8 query heads over 2 kv heads (replicated on tp ranks past 2).
LLAMA_GQA = dict(model_type="llama", vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)


def h100(nodes=2):
    return AnalyticCost(parse_cluster(f"{nodes}x8xH100"))


# ------------------------------------------------------------ analytic numbers


def test_llama7b_forward_flops_is_twice_the_params_per_token():
    tokens = 4096
    flops = forward_flops(LLAMA_7B, "lm", tokens, seq_len=128)
    # 2 FLOPs per weight per token; the embedding lookup is no matmul (-2%),
    # attention over 128 tokens adds ~0.3%.
    assert flops == pytest.approx(2 * LLAMA_7B_PARAMS * tokens, rel=0.03)


def test_block_flops_by_hand():
    h, inter, s = 4096, 11008, 2048
    matmul = 4 * h * h + 3 * h * inter            # q, k, v, o + gate, up, down
    # causal attention: query i sees i + 1 keys; QK^T and AV, 2 FLOPs per multiply-add
    attention = 2 * 2 * h * s * (s + 1) / 2
    assert block_flops(LLAMA_7B, s, s) == pytest.approx(2 * matmul * s + attention, rel=1e-12)
    # tp splits both terms evenly when heads and the MLP divide
    assert block_flops(LLAMA_7B, s, s, tp=4) == pytest.approx(block_flops(LLAMA_7B, s, s) / 4, rel=1e-12)


def test_resident_bytes_of_trainable_bf16_7b_at_tp2():
    norms = 4096 * (2 * 32 + 1)                    # replicated on every tp rank
    per_worker = (LLAMA_7B_PARAMS - norms) // 2 + norms
    # bf16 params 2 + fp32 grad 4 + Adam m, v 8 + fp32 grad-norm mask 4 + fp32 master 4
    expected = per_worker * (2 + 4 + 8 + 4 + 4)
    model = ModelInfo(LLAMA_7B, dtype="bfloat16", trains=True)
    assert h100().resident_bytes(model, Strategy(dp=4, tp=2, pp=1)) == expected
    frozen = ModelInfo(LLAMA_7B, dtype="bfloat16")
    assert h100().resident_bytes(frozen, Strategy(dp=4, tp=2, pp=1)) == 2 * per_worker


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resident_bytes_are_what_the_trainer_keeps(dtype):
    model = ReaLModel.from_config(TINY, dtype=dtype)
    trainer = Trainer(model, OptimConfig())
    kept = model.flat.nbytes + sum(t.nbytes for t in vars(trainer).values() if isinstance(t, torch.Tensor))
    info = ModelInfo(TINY, dtype=str(dtype).replace("torch.", ""), trains=True)
    assert h100().resident_bytes(info, Strategy(1, 1, 1)) == kept


@pytest.mark.parametrize("config", [TINY, SMALL], ids=["tiny", "small"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_bytes_are_what_autograd_saves(config, dtype):
    model = ReaLModel.from_config(config, dtype=dtype)
    ids, cu = packed_batch(config, 512)
    info = model.packed_info(cu)
    x = model.embed(ids, info).detach().requires_grad_()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        next(iter(model.model.layers.values()))(x, info, None)
    # the rope cos/sin tables are shared by all blocks and not counted per block (~1%)
    expected = activation_bytes_per_token(config, 1, model.flat.element_size()) * 512
    assert sum(saved.values()) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("n_seqs,prompt_len,gen_len", [(1, 8, 1), (4, 8, 9), (16, 11, 40), (64, 3, 100)])
def test_kv_cache_size_matches_the_engine(n_seqs, prompt_len, gen_len):
    model = ReaLModel.from_config(TINY)
    prompts = [[1] * prompt_len] * n_seqs
    cache = new_cache(model, prompts, GenerationConfig(max_new_tokens=gen_len))
    for seq in range(n_seqs):
        cache.allocate(seq, prompt_len)
    for _ in range(gen_len - 1):   # every decode step caches one token per sequence
        for seq in range(n_seqs):
            cache.allocate(seq, 1)
    assert kv_cache_tokens(n_seqs, prompt_len, gen_len) == cache.capacity_tokens


def test_pp_bubble_by_hand():
    assert pipeline_bubble(1, 1) == 0
    assert pipeline_bubble(4, 1) == pytest.approx(3 / 4)
    assert pipeline_bubble(4, 12) == pytest.approx(3 / 15)


def test_decode_is_bandwidth_bound_for_7b_at_batch_1():
    hw = parse_cluster("1x8xH100")
    cost = AnalyticCost(hw, op_overhead=0.0)
    model = ModelInfo(LLAMA_7B)
    step = cost.decode_time(model, LLAMA_7B.num_layers, 1, 128, 1, last=True)
    weights = 2 * LLAMA_7B_PARAMS - 2 * 32000 * 4096      # bf16; the embedding is a lookup, not read whole
    bound = weights / (hw.mem_bw * hw.decode_bw_eff)
    assert bound <= step <= 1.02 * bound


def test_reward_fn_costs_next_to_nothing():
    work = MFCWork("reward_fn", 512, 128, 128)
    assert 0 < h100().mfc_time(None, work, Strategy(8, 1, 1)) < 0.01
    assert h100().peak_bytes(None, work, Strategy(8, 1, 1)) == 0


# ------------------------------------------------------------ monotonicity

ACTOR = ModelInfo(LLAMA_7B, trains=True)
WORKS = [MFCWork("generate", 256, 128, 128), MFCWork("inference", 256, 128, 128),
         MFCWork("train_step", 256, 128, 128, n_minibatches=2)]


@pytest.mark.parametrize("work", WORKS, ids=lambda w: w.interface)
def test_more_tp_means_less_memory_per_worker(work):
    cost = h100()
    for pp in (1, 2):
        resident = [cost.resident_bytes(ACTOR, Strategy(1, tp, pp)) for tp in (1, 2, 4, 8)]
        peak = [cost.peak_bytes(ACTOR, work, Strategy(1, tp, pp, 4)) for tp in (1, 2, 4, 8)]
        assert resident == sorted(resident, reverse=True) and len(set(resident)) == 4
        assert peak == sorted(peak, reverse=True)


@pytest.mark.parametrize("work", WORKS, ids=lambda w: w.interface)
@pytest.mark.parametrize("strategy", [Strategy(8, 1, 1), Strategy(2, 4, 1), Strategy(1, 4, 4, 8)], ids=str)
def test_more_tokens_take_longer(work, strategy):
    cost = h100()
    longer = [MFCWork(work.interface, work.n_seqs * k, work.prompt_len, work.gen_len * k, work.n_minibatches)
              for k in (1, 2, 4)]
    times = [cost.mfc_time(ACTOR, w, strategy) for w in [work] + longer[1:]]
    assert times == sorted(times) and times[0] < times[-1]


def test_more_microbatches_shrink_the_pipeline_bubble():
    cost = h100()
    work = MFCWork("train_step", 512, 256, 256)
    times = [cost.mfc_time(ACTOR, work, Strategy(1, 4, 4, m)) for m in (1, 2, 4, 8)]
    assert times == sorted(times, reverse=True) and times[-1] < 0.6 * times[0]
    bubbles = [pipeline_bubble(4, m) for m in (1, 2, 4, 8)]
    assert bubbles == sorted(bubbles, reverse=True)


def test_crossing_nodes_costs_more_than_nvlink():
    cost = h100(nodes=2)
    assert cost.all_reduce_time(1 << 30, 8, 8) < cost.all_reduce_time(1 << 30, 8, 16)
    assert cost.p2p_time(1 << 30, 0, 1) < cost.p2p_time(1 << 30, 0, 8)


def test_bad_strategies_are_named():
    with pytest.raises(ValueError, match="tp=3 must divide"):
        h100().mfc_time(ACTOR, WORKS[0], Strategy(1, 3, 1))
    with pytest.raises(ValueError, match="pp=64 exceeds"):
        h100().resident_bytes(ACTOR, Strategy(1, 1, 64))
    with pytest.raises(ValueError, match="dp=0"):
        Strategy(0, 1, 1)
    with pytest.raises(ValueError, match="interface 'train'"):
        MFCWork("train", 8, 8, 8)
    with pytest.raises(ValueError, match="dtype='int8'"):
        ModelInfo(LLAMA_7B, dtype="int8")


# ------------------------------------------------------------ hardware


def test_parse_cluster():
    hw = parse_cluster("16x8xH100")
    assert (hw.n_nodes, hw.gpus_per_node, hw.n_workers, hw.name) == (16, 8, 128, "H100-80GB")
    assert hw.peak_flops == PRESETS["H100-80GB"].peak_flops
    assert parse_cluster(" 2X4xa100 ").gpus_per_node == 4
    assert parse_cluster("1x8xH200").mem_bw > parse_cluster("1x8xH100").mem_bw
    assert (hw.node(7), hw.node(8)) == (0, 1)
    assert hw.link_bw(0, 7) == hw.intra_bw and hw.link_bw(7, 8) == hw.inter_bw


@pytest.mark.parametrize("spec,match", [
    ("16x8", "NODESxGPUSxNAME"), ("H100", "NODESxGPUSxNAME"), ("axbxH100", "NODESxGPUSxNAME"),
    ("0x8xH100", ">= 1"), ("2x8xV100", "unknown hardware 'V100'"), ("1x4xCPU", "profile"),
    ("", "NODESxGPUSxNAME")])
def test_parse_cluster_rejects(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_cluster(spec)


def test_cpu_workers_share_cores():
    hw = Hardware("CPU", 1, 4, 1e10, 1e10, 1 << 30, 1e9, 1e9, shared_cores=2)
    assert (hw.contention(2), hw.contention(4)) == (1.0, 2.0)
    assert PRESETS["H100-80GB"].contention(8) == 1.0
    # A measured curve: linear between its points, growing as k past the last one.
    measured = dataclasses.replace(hw, contention_curve=((1, 1.0), (2, 1.1), (4, 2.4)))
    assert [measured.contention(k) for k in (1, 2, 3, 4, 8)] == pytest.approx([1.0, 1.1, 1.75, 2.4, 4.8])
    with pytest.raises(ValueError, match="outside"):
        hw.node(4)


def test_curve_interpolates_in_log_space_and_never_decreases():
    c = Curve([10, 100, 1000], [1.0, 10.0, 5.0])       # noise: the last point dipped
    assert [c(10), c(100), c(1000)] == pytest.approx([1.0, 10.0, 10.0])
    assert c(math.sqrt(10 * 100)) == pytest.approx(math.sqrt(10))
    assert c(1) == 1.0 and c(2000) == pytest.approx(10.0)
    # past the grid: the last segment's fixed + marginal cost
    assert Curve([10, 100], [2.0, 11.0])(1000) == pytest.approx(101.0)


# ------------------------------------------------------------ a real profile


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("profile") / "profile.json")
    run_profile(path, token_grid=(64, 256, 1024), decode_batches=(1, 8), repeats=3)
    return path


def test_profile_json_describes_the_machine(profile_path):
    with open(profile_path) as f:
        prof = json.load(f)
    assert prof["machine"]["cpu_count"] >= 1 and prof["machine"]["torch"] == torch.__version__
    assert prof["comm"]["p2p"]["bw"] > 0 and prof["comm"]["all_reduce"]["latency"] > 0
    hw = parse_cluster("1x4xCPU", profile=profile_path)
    assert hw.shared_cores == prof["machine"]["cpu_count"] and hw.n_workers == 4
    # Contention is measured up to twice the cores and is what the Hardware uses.
    cores, counts = prof["machine"]["cpu_count"], prof["contention"]["workers"]
    assert counts[0] == 1 and counts[-1] >= min(2 * cores, 16)
    assert all(x >= 1.0 for x in prof["contention"]["slowdown"])
    assert hw.contention(counts[-1]) == pytest.approx(prof["contention"]["slowdown"][-1])
    # So are the runtime's data transfer and model build.
    transfer = prof["comm"]["transfer"]
    assert len(transfer["s"]) == 2 and min(transfer["s"]) > 0
    assert (hw.transfer_fixed, hw.transfer_per_sample) == (transfer["fixed_s"], transfer["per_sample_s"])
    assert (hw.build_fixed, hw.build_per_block) == (prof["build"]["fixed_s"], prof["build"]["per_block_s"])


def test_old_profile_is_refused(profile_path, tmp_path):
    with open(profile_path) as f:
        prof = json.load(f)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(dict(prof, version=1)))
    with pytest.raises(ValueError, match="profile version 1.*re-run `real-ext profile --out "):
        ProfiledCost.from_json(str(old))


def test_profiled_cost_is_monotone(profile_path):
    cost = ProfiledCost.from_json(profile_path, n_workers=2)
    model = ModelInfo(SMALL, dtype="float32", trains=True)
    for interface in ("generate", "inference", "train_step"):
        times = [cost.mfc_time(model, MFCWork(interface, n, 8, 8), Strategy(1, 1, 1)) for n in (4, 16, 64)]
        assert times == sorted(times) and times[0] < times[-1], interface
    assert cost.mfc_time(model, WORKS[2], Strategy(2, 1, 1)) < cost.mfc_time(model, WORKS[2], Strategy(1, 1, 1))


@pytest.mark.parametrize("hf,tp", [(get_task("sort").model_config("small"), 2), (LLAMA_GQA, 2), (LLAMA_GQA, 8)])
def test_tp_rank_block_is_what_a_tp_rank_holds(hf, tp):
    """The profile times a tp rank's block as a model of its own; its block
    holds exactly the parameters the runtime's sharding gives tp rank 0 (kv
    heads replicated past their count)."""
    config = ModelConfig.from_hf_dict(hf)
    local = ReaLModel.from_config(tp_rank_config(config, tp))
    block = sum(p.numel() for n, p in local.named_parameters() if ".layers.0." in n)
    shards = ModelShards(config, "lm", ParallelLayout(tuple(range(tp)), 1, tp, 1)).shards(0)
    assert block == sum(s.numel for s in shards if s.spec.unit == 1)


def test_profiled_blocks_per_tp(profile_path):
    """On the profiled model, a block at a profiled tp costs what was
    measured at that tp."""
    with open(profile_path) as f:
        layer = json.load(f)["layer"]
    assert set(layer["tp"]) == {"1", "2"} and layer["tokens"][2] == 1024
    cost = ProfiledCost.from_json(profile_path, n_workers=2)
    model = ModelInfo(cost.config)
    for tp in (1, 2):
        for backward, key in ((False, "forward_s"), (True, "forward_backward_s")):
            measured = layer["tp"][str(tp)][key][2]
            assert cost.layers_time(model, 3, 1024, layer["seq_len"], tp, backward) == pytest.approx(3 * measured)
