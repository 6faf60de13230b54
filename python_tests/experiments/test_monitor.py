"""RunMonitor: stats.jsonl stays strict JSON, TensorBoard holds the scalars at
their steps, a resumed run continues both without duplicates, wandb is used
when asked (and named when missing), and the console shows progress."""
from __future__ import annotations

import io
import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real_ext.experiments.monitor import RunMonitor


def _stats(step: int, reward: float) -> dict:
    return {"step": step, "time_s": 0.5, "reward/mean": reward, "actor_train/loss": -0.25 * step,
            "actor_gen/response_tokens": 12}


def _lines(path) -> list[dict]:
    def strict(name):
        raise AssertionError(f"stats.jsonl holds the non-JSON constant {name}")
    return [json.loads(line, parse_constant=strict) for line in path.read_text().splitlines()]


def _scalars(out, key) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(key)]


def test_stats_jsonl_holds_what_was_logged(tmp_path):
    with RunMonitor(tmp_path, 3, console=io.StringIO()) as monitor:
        monitor.log(_stats(0, 0.5))
        monitor.log({"step": 1, "time_s": 0.5, "reward/mean": float("nan"), "actor_train/loss": float("inf"),
                     "actor_train/grad_norm": np.float32(2.5), "critic_train/loss": torch.tensor(0.125),
                     "note": "warm"})
        monitor.log_eval({"step": 1, "eval/reward/mean": 0.75})
        # Each line is on disk as soon as it is logged.
        assert len((tmp_path / "stats.jsonl").read_text().splitlines()) == 3
    first, second, evaluation = _lines(tmp_path / "stats.jsonl")
    assert first == _stats(0, 0.5)
    assert second == {"step": 1, "time_s": 0.5, "reward/mean": "nan", "actor_train/loss": "inf",
                      "actor_train/grad_norm": 2.5, "critic_train/loss": 0.125, "note": "warm"}
    assert evaluation == {"step": 1, "eval/reward/mean": 0.75}


def test_tensorboard_holds_the_scalars_at_their_steps(tmp_path):
    with RunMonitor(tmp_path, 3, console=io.StringIO()) as monitor:
        for step in range(3):
            monitor.log(_stats(step, 0.1 * step))
        monitor.log_eval({"step": 2, "eval/reward/mean": 0.75})
    assert _scalars(tmp_path, "reward/mean") == [(s, pytest.approx(0.1 * s)) for s in range(3)]
    assert _scalars(tmp_path, "actor_gen/response_tokens") == [(s, 12.0) for s in range(3)]
    assert _scalars(tmp_path, "eval/reward/mean") == [(2, 0.75)]
    assert "step" not in EventAccumulator(str(tmp_path / "tensorboard")).Reload().Tags()["scalars"]


def test_non_finite_scalars_reach_tensorboard(tmp_path):
    with RunMonitor(tmp_path, 1, console=io.StringIO()) as monitor:
        monitor.log({"step": 0, "time_s": 1.0, "actor_train/loss": float("nan")})
    [(step, value)] = _scalars(tmp_path, "actor_train/loss")
    assert step == 0 and math.isnan(value)


def test_resume_continues_without_duplicates(tmp_path):
    with RunMonitor(tmp_path, 5, console=io.StringIO()) as monitor:
        for step in range(4):
            monitor.log(_stats(step, 1.0))
        monitor.log_eval({"step": 1, "eval/reward/mean": 0.5})
        monitor.log_eval({"step": 3, "eval/reward/mean": 0.6})
    with open(tmp_path / "stats.jsonl", "a") as f:
        f.write('{"step": 4, "reward/me')      # the crash cut the last line short
    # The checkpoint was at step 2: steps 2-3 and the eval after step 3 are redone.
    with RunMonitor(tmp_path, 5, start_step=2, console=io.StringIO()) as monitor:
        monitor.truncate_after(2)
        assert [r["step"] for r in _lines(tmp_path / "stats.jsonl")] == [0, 1, 1]
        for step in range(2, 5):
            monitor.log(_stats(step, 2.0))
    records = _lines(tmp_path / "stats.jsonl")
    assert [r["step"] for r in records] == [0, 1, 1, 2, 3, 4]
    assert [r.get("reward/mean") for r in records] == [1.0, 1.0, None, 2.0, 2.0, 2.0]
    assert _scalars(tmp_path, "reward/mean") == [(0, 1.0), (1, 1.0), (2, 2.0), (3, 2.0), (4, 2.0)]
    assert _scalars(tmp_path, "eval/reward/mean") == [(1, 0.5)]
    assert not (tmp_path / "stats.jsonl.tmp").exists()


def test_a_fresh_start_over_a_crashed_one_starts_empty(tmp_path):
    with RunMonitor(tmp_path, 3, console=io.StringIO()) as monitor:
        monitor.log(_stats(0, 1.0))
    with RunMonitor(tmp_path, 3, console=io.StringIO()) as monitor:
        monitor.truncate_after(0)
        monitor.log(_stats(0, 3.0))
    assert _lines(tmp_path / "stats.jsonl") == [_stats(0, 3.0)]
    assert _scalars(tmp_path, "reward/mean") == [(0, 3.0)]


def test_missing_wandb_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)      # `import wandb` now fails, installed or not
    with pytest.raises(ImportError, match=r"wandb: true but wandb is not installed; pip install wandb "
                                          r"or set log.wandb: false"):
        RunMonitor(tmp_path, 3, wandb=True, console=io.StringIO())


def test_wandb_gets_the_scalars(tmp_path, monkeypatch):
    calls = []
    run = types.SimpleNamespace(log=lambda data, step: calls.append(("log", data, step)),
                                finish=lambda: calls.append(("finish",)))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return run
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with RunMonitor(tmp_path, 2, wandb=True, wandb_project="real", config={"lr": 1e-3}, tensorboard=False,
                    console=io.StringIO()) as monitor:
        monitor.log({"step": 0, "time_s": 1.0, "reward/mean": 0.5, "note": "text is not a scalar"})
    assert calls[0][0] == "init" and calls[0][1]["project"] == "real" and calls[0][1]["config"] == {"lr": 1e-3}
    assert calls[1:] == [("log", {"time_s": 1.0, "reward/mean": 0.5}, 0), ("finish",)]
    assert not (tmp_path / "tensorboard").exists()


def test_console_line_per_step(tmp_path):
    console = io.StringIO()
    with RunMonitor(tmp_path, 4, console=console, keys=("reward/mean", "critic_train/loss"),
                    tensorboard=False) as monitor:
        monitor.log(_stats(0, 0.123456))
        monitor.log(_stats(1, 0.5))
        monitor.log_eval({"step": 1, "eval/reward/mean": 0.75})
    lines = console.getvalue().splitlines()
    assert len(lines) == 3
    assert "1/4" in lines[0] and "25%" in lines[0] and "ETA 0:02" in lines[0] and "elapsed" in lines[0]
    assert "2/4" in lines[1] and "50%" in lines[1] and "ETA 0:01" in lines[1]
    assert "reward/mean 0.1235" in lines[0] and "critic_train" not in lines[0]
    assert "actor_train/loss" not in lines[0]      # not among the keys asked for
    assert lines[2].startswith("eval after step 2/4") and "eval/reward/mean 0.75" in lines[2]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_redraws_on_a_terminal(tmp_path):
    console = _Terminal()
    with RunMonitor(tmp_path, 2, console=console, tensorboard=False) as monitor:
        monitor.log(_stats(0, 0.5))
        assert console.getvalue().startswith("\r") and "\n" not in console.getvalue()
        monitor.log(_stats(1, 0.5))
    # Both steps on one redrawn line, ended after the last step.
    assert console.getvalue().count("\r") == 2 and console.getvalue().endswith("\n")
    assert console.getvalue().count("\n") == 1


@pytest.mark.parametrize("stats, match", [
    ({"time_s": 1.0}, r"lack \['step'\]"),
    ({"step": 0}, r"lack \['time_s'\]"),
    ({"step": 0.0, "time_s": 1.0}, "step must be an int"),
    ({"step": 0, "time_s": 1.0, "x": object()}, r"stats\['x'\] is a object"),
])
def test_bad_stats_are_named(tmp_path, stats, match):
    with RunMonitor(tmp_path, 2, console=io.StringIO(), tensorboard=False) as monitor:
        with pytest.raises((ValueError, TypeError), match=match):
            monitor.log(stats)


def test_a_resumed_run_does_not_log_earlier_steps(tmp_path):
    with RunMonitor(tmp_path, 5, start_step=2, console=io.StringIO(), tensorboard=False) as monitor:
        with pytest.raises(ValueError, match="step 1 precedes start_step=2"):
            monitor.log(_stats(1, 1.0))


def test_bad_step_counts(tmp_path):
    with pytest.raises(ValueError, match="total_steps"):
        RunMonitor(tmp_path, 0)
    with pytest.raises(ValueError, match="start_step"):
        RunMonitor(tmp_path, 3, start_step=4)
