"""Every experiment kind end to end through the runner on tiny models: the
run folder each leaves (config, stats, TensorBoard, trace, timeline,
checkpoints, HF models loadable by transformers), evaluation, and the CLI."""
import json
import os

import pytest
import torch
import yaml

from python_tests.experiments.runs import TASK, config, sft_checkpoint
from real_ext.experiments import checkpoint
from real_ext.experiments.cli import main
from real_ext.experiments.runner import run_experiment

KINDS = ("sft", "rw", "dpo", "ppo", "grpo", "remax")
RL = ("ppo", "grpo", "remax")


@pytest.fixture(scope="module")
def actor(tmp_path_factory):
    return sft_checkpoint(str(tmp_path_factory.mktemp("actor")))


def read_stats(out):
    with open(os.path.join(out, "stats.jsonl")) as f:
        return [json.loads(line) for line in f]


def spans_by_mfc(out):
    with open(os.path.join(out, "trace.json")) as f:
        events = json.load(f)["traceEvents"]
    by = {}
    for e in events:
        if e.get("ph") == "X" and e["cat"] == "run":
            by.setdefault(e["name"], set()).add(e["tid"])
    return by


@pytest.mark.parametrize("kind", KINDS)
def test_run_folder(kind, actor, tmp_path):
    out = str(tmp_path / kind)
    summary = run_experiment(config(kind, out, actor), console=open(os.devnull, "w"))
    # The resolved config reloads to the same experiment.
    with open(os.path.join(out, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["experiment"] == kind and saved["steps"] == 3
    # One line per step with step and time, plus eval lines after steps 2 and 3.
    stats = read_stats(out)
    train = [s for s in stats if "time_s" in s]
    assert [s["step"] for s in train] == [0, 1, 2]
    if kind in RL:   # the task's reward (PPO trains on a reward model's score and watches the task's)
        key = "monitor_reward/mean" if kind == "ppo" else "reward/mean"
        assert all(0.0 <= s[key] <= 1.0 for s in train)
    evals = [s for s in stats if any(k.startswith("eval/") for k in s)]
    assert [s["step"] for s in evals] == [1, 2] and summary["eval"]
    # Every MFC ran on exactly the workers of its mesh.
    resolved = saved["allocations"]
    runs = spans_by_mfc(out)
    for name, alloc in resolved.items():
        assert runs[name] == set(alloc["mesh"]), name
    assert os.path.getsize(os.path.join(out, "timeline.png")) > 10_000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tensorboard")))
    # Checkpoints at step 2 and the end, complete and verified; the final models beside them.
    assert checkpoint.complete(os.path.join(out, "checkpoints")) == [2, 3]
    assert checkpoint.verify(checkpoint.path_of(os.path.join(out, "checkpoints"), 3))["step"] == 3
    assert os.path.exists(os.path.join(out, "done.json"))


@pytest.mark.parametrize("kind", ("sft", "rw"))
def test_final_model_loads_in_transformers(kind, actor, tmp_path):
    """The trained model is a HF checkpoint as is: transformers reproduces our
    logits (SFT) and hidden states at the last token (the reward model's trunk)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from real_ext.model import ReaLModel
    out = str(tmp_path / kind)
    run_experiment(config(kind, out, actor, steps=2, eval={"every": 0}, checkpoint={"every": 0}),
                   console=open(os.devnull, "w"))
    role = "actor" if kind == "sft" else "reward"
    path = os.path.join(out, "models", role)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("<bos> sort 3 1 2 =")["input_ids"]
    assert ids == TASK.prompts(1, 0)[0][:0] + [TASK.bos_id, TASK.sort_id] + [TASK.token_to_id[d] for d in "312"] + [
        TASK.equals_id]
    hf = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    ours = ReaLModel.from_pretrained(path, head="lm" if kind == "sft" else "value")
    x = torch.tensor([ids])
    cu = torch.tensor([0, len(ids)], dtype=torch.int32)
    with torch.no_grad():
        hidden = hf(x, output_hidden_states=True).hidden_states[-1][0]
        if kind == "sft":
            torch.testing.assert_close(ours(x[0], cu), hf(x).logits[0], rtol=1e-4, atol=1e-4)
        else:   # value = <value head, final hidden state>
            torch.testing.assert_close(ours(x[0], cu), (hidden @ ours.value_head.weight.T).squeeze(-1),
                                       rtol=1e-4, atol=1e-4)


def test_generate_cli_matches_transformers(actor, capsys):
    """`real-ext generate --greedy` continues a prompt like transformers' greedy generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    prompt = "<bos> sort 4 2 9 ="
    assert main(["generate", actor, "--prompt", prompt, "--greedy", "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out.strip()
    tokenizer = AutoTokenizer.from_pretrained(actor)
    hf = AutoModelForCausalLM.from_pretrained(actor, torch_dtype=torch.float32)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=TASK.eos_id, pad_token_id=TASK.pad_id)
    expected = tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert printed == f"[0] {prompt} -> {expected}"


def test_quickstart_pipeline_in_small(tmp_path, capsys):
    """`real-ext quickstart` (the packaged SFT -> RM -> PPO pipeline) with a
    few steps per stage: every stage's folder, the PPO stage on 4 workers."""
    out = str(tmp_path / "qs")
    code = main(["quickstart", "--out", out, "stages.sft.steps=2", "stages.rw.steps=2", "stages.ppo.steps=2",
                 "stages.ppo.eval.every=1", "stages.ppo.checkpoint.every=1", "stages.ppo.data.eval_n=8",
                 "stages.ppo.ppo.batch_size=16", "stages.rw.data.n=64"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "=== stage ppo" in printed and "reward/mean" in printed
    for stage in ("sft", "rw", "ppo"):
        for name in ("config.yaml", "stats.jsonl", "trace.json", "timeline.png", "done.json"):
            assert os.path.exists(os.path.join(out, stage, name)), (stage, name)
    assert os.path.exists(os.path.join(out, "config.yaml"))
    stats = [s for s in read_stats(os.path.join(out, "ppo")) if "time_s" in s]
    assert len(stats) == 2 and all("monitor_reward/mean" in s for s in stats)
    runs = spans_by_mfc(os.path.join(out, "ppo"))
    assert runs["actor_gen"] == {0, 1, 2, 3} and runs["actor_train"] == {0, 1} and runs["critic_train"] == {2, 3}
