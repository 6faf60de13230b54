"""Loading a config file (one experiment, or a pipeline of stages) and
running pipelines: stage after stage, each in ``<out>/<stage>`` with the run
folder layout of real_ext/experiments/runner.py. A string ``${stage}`` in a
stage is an earlier stage's run folder, e.g. ``path: ${sft}/models/actor``.
Every stage is type-checked before the first one starts; each stage's files
(checkpoints of earlier stages) are checked when it starts."""
from __future__ import annotations

import json
import os
import re

from real_ext.experiments.config import ConfigError, apply_overrides, dump_yaml, from_dict, read_yaml, to_dict
from real_ext.experiments.runner import run_experiment
from real_ext.experiments.schema import ExperimentConfig, PipelineConfig

REFERENCE = re.compile(r"\$\{([^}]*)\}")


def load(path: str, overrides=(), out: str | None = None, launcher: str | None = None,
         address: str | None = None) -> ExperimentConfig | PipelineConfig:
    """The typed config in ``path`` with ``overrides`` (``a.b=value``) applied;
    ``out`` replaces its run folder; ``launcher`` and ``address`` its (every
    stage's) launcher and Ray address."""
    data = read_yaml(path)
    runs = [f"stages.{name}." for name in data.get("stages") or {}] if "stages" in data else [""]
    # json.dumps: the address stays a string, whatever YAML would read in it.
    given = {"launcher": launcher, "ray_address": json.dumps(address) if address else None}
    extra = [f"{run}{key}={value}" for run in runs for key, value in given.items() if value]
    data = apply_overrides(data, list(overrides) + extra + ([f"out={out}"] if out else []))
    if "stages" in data:
        pipeline = from_dict(PipelineConfig, data)
        stage_configs(pipeline)   # type-check every stage now
        return pipeline
    return from_dict(ExperimentConfig, data)


def _substitute(value, folders: dict[str, str], where: str):
    if isinstance(value, dict):
        return {k: _substitute(v, folders, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, folders, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def folder(m):
            if m.group(1) not in folders:
                raise ConfigError(f"{where}: ${{{m.group(1)}}} names no earlier stage (earlier: "
                                  f"{', '.join(folders) or 'none'})")
            return folders[m.group(1)]
        return REFERENCE.sub(folder, value)
    return value


def stage_configs(pipeline: PipelineConfig) -> dict[str, ExperimentConfig]:
    if not pipeline.stages:
        raise ConfigError("stages: a pipeline needs at least one stage")
    configs, folders = {}, {}
    for name, raw in pipeline.stages.items():
        where = f"stages.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected an experiment config (a mapping), got {raw!r}")
        if "out" in raw:
            raise ConfigError(f"{where}.out: a stage runs in <pipeline out>/{name}; remove its out")
        raw = dict(_substitute(raw, folders, where), out=os.path.join(pipeline.out, name))
        configs[name] = from_dict(ExperimentConfig, raw, where)
        folders[name] = configs[name].out
    return configs


def run_pipeline(pipeline: PipelineConfig, *, resume: bool = False, console=None) -> dict[str, dict]:
    """Run the stages in order; with ``resume``, finished stages are kept and
    the first unfinished one resumes. Returns each stage's summary."""
    configs = stage_configs(pipeline)
    os.makedirs(pipeline.out, exist_ok=True)
    dump_yaml(to_dict(pipeline), os.path.join(pipeline.out, "config.yaml"))
    summaries = {}
    for name, config in configs.items():
        done = os.path.join(config.out, "done.json")
        if resume and os.path.exists(done):
            with open(done) as f:
                summaries[name] = json.load(f)
            continue
        if console is not None:
            print(f"=== stage {name}: {config.experiment}, {config.steps} steps, {config.n_workers} workers -> "
                  f"{config.out}", file=console, flush=True)
        summaries[name] = run_experiment(config, resume=resume, console=console)
    return summaries
