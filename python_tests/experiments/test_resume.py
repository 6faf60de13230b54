"""Resume: a run killed after a checkpoint and resumed with --resume repeats
the uninterrupted run's statistics exactly on CPU (losses, rewards, KL, grad
norms), and a crash mid-save loses nothing."""
import json
import os
import signal
import subprocess
import sys
import time

import yaml

from python_tests.experiments.runs import raw, sft_checkpoint
from real_ext.experiments import checkpoint
from real_ext.experiments.config import from_dict
from real_ext.experiments.runner import run_experiment
from real_ext.experiments.schema import ExperimentConfig

STEPS = 5


def _stats(out):
    with open(os.path.join(out, "stats.jsonl")) as f:
        return [json.loads(line) for line in f]


def _write_config(tmp_path, out, actor) -> str:
    # PPO: generation seeds, the data order, the KL controller, optimizer moments
    # and the lr schedule all have to continue where they were.
    data = raw("ppo", out, actor, steps=STEPS, checkpoint={"every": 2, "keep": 5}, eval={"every": 0})
    data["data"]["eval_n"] = 0
    data["ppo"]["adaptive_kl"] = True
    data["actor"]["optimizer"].update(schedule="cosine", warmup_steps=1, total_steps=STEPS)
    path = tmp_path / f"{os.path.basename(out)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _cli(*args):
    return [sys.executable, "-m", "real_ext.experiments.cli", *args]


def test_killed_run_resumes_exactly(tmp_path):
    actor = sft_checkpoint(str(tmp_path))
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    subprocess.run(_cli("run", _write_config(tmp_path, whole, actor)), check=True, stdout=subprocess.DEVNULL)

    cfg = _write_config(tmp_path, cut, actor)
    proc = subprocess.Popen(_cli("run", cfg), stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not checkpoint.complete(os.path.join(cut, "checkpoints")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)   # the master and its workers, wherever they were
    proc.wait()
    assert checkpoint.complete(os.path.join(cut, "checkpoints"))[-1] < STEPS

    subprocess.run(_cli("run", cfg, "--resume"), check=True, stdout=subprocess.DEVNULL)
    a, b = _stats(whole), _stats(cut)
    assert [s["step"] for s in b] == list(range(STEPS))
    for x, y in zip(a, b):
        x.pop("time_s"), y.pop("time_s")
        assert x == y, f"step {x['step']} differs after resume"


def test_interrupted_save_keeps_the_earlier_checkpoint(tmp_path):
    """A save that died before its rename leaves a temporary folder, which is
    never resumed from; the previous checkpoint is intact and used."""
    actor = sft_checkpoint(str(tmp_path))
    out = str(tmp_path / "run")
    data = raw("sft", out, actor, steps=2, checkpoint={"every": 1, "keep": 5}, eval={"every": 0})
    run_experiment(from_dict(ExperimentConfig, data), console=open(os.devnull, "w"))
    root = os.path.join(out, "checkpoints")
    # Pretend step 3's save was cut short: a partial folder under the temporary name.
    partial = os.path.join(root, ".step_00000003.tmp")
    os.makedirs(os.path.join(partial, "models"))
    assert checkpoint.complete(root) == [1, 2]
    summary = run_experiment(from_dict(ExperimentConfig, dict(data, steps=3)), resume=True,
                             console=open(os.devnull, "w"))
    assert summary["steps"] == 3 and checkpoint.complete(root) == [1, 2, 3]
    assert not os.path.exists(partial)
    assert [s["step"] for s in _stats(out) if "time_s" in s] == [0, 1, 2]
