"""`real-ext plan` on an experiment config, and `allocations: auto` (the
search on this machine's profiled CPU workers before a run)."""
import yaml

from real_ext.experiments.build import resolve
from real_ext.experiments.cli import main
from real_ext.experiments.config import from_dict
from real_ext.experiments.schema import ExperimentConfig
from real_ext.plan.profile import run_profile

PPO = {"experiment": "ppo", "n_workers": 2, "steps": 2,
       "actor": {"init": {"task": "sort"}, "optimizer": {"lr": 1e-3}},
       "reward": {"init": {"task": "sort", "seed": 2}},
       "data": {"task": "sort", "n": 256}, "generation": {"max_new_tokens": 8},
       "ppo": {"batch_size": 16, "n_minibatches": 2}}


def test_plan_writes_allocations_run_accepts(tmp_path, capsys):
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(yaml.safe_dump(PPO))
    out = tmp_path / "alloc.yaml"
    png = tmp_path / "sim.png"
    assert main(["plan", str(cfg), "--cluster", "1x8xH100", "--time", "2", "--out", str(out),
                 "--timeline", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "| searched |" in printed and "| symmetric |" in printed and "| disjoint |" in printed
    allocations = yaml.safe_load(out.read_text())["allocations"]
    assert set(allocations) == {"actor_gen", "reward_inf", "ref_inf", "critic_inf", "actor_train", "critic_train"}
    # The written allocations are a valid config for 8 workers.
    c = resolve(from_dict(ExperimentConfig, dict(PPO, n_workers=8, allocations=allocations)))
    assert all(max(a.mesh) < 8 for a in c.allocations.values())
    assert png.stat().st_size > 10_000


def test_plan_bad_cluster_is_named(tmp_path, capsys):
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(yaml.safe_dump(PPO))
    assert main(["plan", str(cfg), "--cluster", "8xH100"]) == 2
    assert "--cluster: cluster '8xH100' is not of the form NODESxGPUSxNAME" in capsys.readouterr().err
    assert main(["plan", str(cfg), "--cluster", "1x2xCPU", "--profile", str(tmp_path / "none.json")]) == 2
    assert "run `real-ext profile" in capsys.readouterr().err
    # A profile an older real_ext wrote lacks what this one measures: named, with the command to redo it.
    old = tmp_path / "old.json"
    old.write_text('{"version": 1}')
    assert main(["plan", str(cfg), "--cluster", "1x2xCPU", "--profile", str(old)]) == 2
    assert (f"--profile: {old}: profile version 1, this real_ext reads version 2; re-run `real-ext profile --out "
            f"{old}`") in capsys.readouterr().err


def test_allocations_auto_searches_on_the_profiled_workers(tmp_path):
    profile = str(tmp_path / "profile.json")
    run_profile(profile, token_grid=(64, 256), decode_batches=(1, 8), repeats=1)
    c = resolve(from_dict(ExperimentConfig, dict(PPO, out=str(tmp_path / "run"), allocations="auto",
                                                  plan={"profile": profile, "time_s": 3})))
    assert set(c.allocations) >= {"actor_gen", "actor_train", "critic_train"}
    for a in c.allocations.values():
        assert set(a.mesh) <= {0, 1} and a.dp * a.tp * a.pp == len(a.mesh)
