"""The typed config loader: YAML -> dataclasses, dotted overrides, "did you
mean", type checks, resolution of defaults."""
import pytest

from real_ext.experiments.build import resolve
from real_ext.experiments.config import ConfigError, apply_overrides, from_dict, to_dict
from real_ext.experiments.pipeline import load, stage_configs
from real_ext.experiments.schema import ExperimentConfig

BASE = {"experiment": "sft", "actor": {"init": {"task": "sort"}, "optimizer": {"lr": 1e-3}},
        "data": {"task": "sort"}}


def test_nested_sections_and_types():
    c = from_dict(ExperimentConfig, dict(BASE, steps=7, allocations={"actor_train": {"mesh": [0, 1], "dp": 2}},
                                         n_workers=2))
    assert c.steps == 7 and c.actor.optimizer.lr == 1e-3
    assert c.allocations["actor_train"].mesh == (0, 1) and c.allocations["actor_train"].dp == 2
    assert c.data.on_long == "truncate"


def test_yaml_exponent_without_dot_is_a_number():
    # PyYAML reads "1e-5" as a string; a float field accepts it.
    c = from_dict(ExperimentConfig, apply_overrides(BASE, ["actor.optimizer.lr=1e-5"]))
    assert c.actor.optimizer.lr == 1e-5


def test_overrides_set_nested_values_and_create_sections():
    data = apply_overrides(BASE, ["actor.optimizer.lr=0.5", "sft.batch_size=8", "log.console_keys=[a, b]"])
    c = from_dict(ExperimentConfig, data)
    assert c.actor.optimizer.lr == 0.5 and c.sft.batch_size == 8 and c.log.console_keys == ("a", "b")
    assert BASE["actor"]["optimizer"]["lr"] == 1e-3   # the input is not modified


@pytest.mark.parametrize("data, expected", [
    (dict(BASE, stepz=3), "stepz: unknown key; did you mean 'steps'?"),
    (apply_overrides(BASE, ["actor.optimizer.lrr=1"]), "actor.optimizer.lrr: unknown key; did you mean 'lr'?"),
    (dict(BASE, experiment="ppoo"), "did you mean 'ppo'?"),
    (dict(BASE, steps="ten"), "steps: expected an integer, got 'ten'"),
    (dict(BASE, steps=True), "steps: expected an integer"),
    (dict(BASE, n_workers=2.5), "n_workers: expected an integer"),
    (apply_overrides(BASE, ["log.tensorboard=maybe"]), "log.tensorboard: expected true or false"),
    (apply_overrides(BASE, ["allocations.actor_train.mesh=3"]), "allocations.actor_train.mesh: expected a list"),
    (apply_overrides(BASE, ["actor.optimizer.lr=-1"]), "actor.optimizer: optimizer lr must be > 0"),
    (dict(BASE, steps=0), "steps must be >= 1"),
    ({k: v for k, v in BASE.items() if k != "experiment"}, "experiment: required field missing"),
])
def test_bad_fields_are_named(data, expected):
    with pytest.raises(ConfigError) as e:
        from_dict(ExperimentConfig, data)
    assert expected in str(e.value)


def test_bad_overrides():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(BASE, ["steps"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(BASE, ["experiment.x=1"])


def test_resolve_fills_defaults_and_round_trips():
    c = resolve(from_dict(ExperimentConfig, dict(BASE, n_workers=2)))
    assert c.sft is not None and c.allocations["actor_train"].dp == 2
    again = resolve(from_dict(ExperimentConfig, to_dict(c)))
    assert to_dict(again) == to_dict(c)


def test_ppo_defaults_ref_and_critic_from_actor(tmp_path):
    from real_ext.tasks import get_task
    task = get_task("sort")
    (tmp_path / "actor").mkdir()
    import json
    (tmp_path / "actor" / "config.json").write_text(json.dumps(task.model_config("tiny")))
    c = resolve(from_dict(ExperimentConfig, {
        "experiment": "ppo", "actor": {"path": str(tmp_path / "actor"), "optimizer": {"lr": 1e-4}},
        "data": {"task": "sort"}, "ppo": {"reward": "task"}}))
    assert c.ref.path == c.actor.path and c.ref.optimizer is None
    assert c.critic.path == c.actor.path and c.critic.optimizer.lr == 1e-4
    assert c.ppo.reward == "task:sort"
    assert set(c.allocations) == {"actor_gen", "reward_fn", "ref_inf", "critic_inf", "actor_train", "critic_train"}


def test_pipeline_stage_references(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("out: OUT\nstages:\n  a: {experiment: sft, actor: {init: {task: sort}, optimizer: {lr: 0.1}}, "
                    "data: {task: sort}}\n  b: {experiment: rw, reward: {path: '${a}/models/actor', "
                    "optimizer: {lr: 0.1}}, data: {task: sort}}\n")
    p = load(str(path), ["stages.b.steps=3"], out=str(tmp_path / "run"))
    stages = stage_configs(p)
    assert stages["b"].reward.path == str(tmp_path / "run" / "a" / "models" / "actor")
    assert stages["b"].steps == 3 and stages["a"].out == str(tmp_path / "run" / "a")
    path.write_text("stages:\n  b: {experiment: rw, reward: {path: '${nope}/m'}}\n")
    with pytest.raises(ConfigError, match=r"stages.b.reward.path: \$\{nope\} names no earlier stage"):
        load(str(path))


@pytest.mark.parametrize("name", ["sft_sort", "rw_sort", "dpo_sort", "ppo_sort", "grpo_sort", "remax_sort"])
def test_examples_are_valid(name, tmp_path, capsys):
    """Every example config loads, resolves and builds (`real-ext check`);
    running them is what the README's example table records."""
    import os

    from real_ext.experiments.cli import main
    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
    assert main(["check", os.path.join(root, f"{name}.yaml")]) == 0
    assert "config OK" in capsys.readouterr().out


def test_quickstart_config_is_valid(capsys):
    from real_ext.experiments.cli import QUICKSTART, main
    assert main(["check", QUICKSTART]) == 0
    assert "config OK" in capsys.readouterr().out
