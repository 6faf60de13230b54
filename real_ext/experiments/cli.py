"""The ``real-ext`` command.

    real-ext run CONFIG.yaml [KEY=VALUE ...] [--out DIR] [--resume] [--launcher ray --address ADDR]
    real-ext check CONFIG.yaml [KEY=VALUE ...]      validate and print the resolved config; starts nothing
    real-ext quickstart [--out DIR] [--resume] [KEY=VALUE ...]
    real-ext generate MODEL_DIR --prompt TEXT [--prompt TEXT ...] [sampling options]
    real-ext plan CONFIG.yaml --cluster 16x8xH100 [--out alloc.yaml] [--timeline sim.png]
    real-ext profile [--out runs/profile.json]     measure this machine for CPU plans

Overrides use dotted paths into the config (``actor.optimizer.lr=1e-5``;
in a pipeline ``stages.ppo.steps=50``); values are YAML. A bad config exits
with status 2 and one line naming the field and the fix.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

import yaml

from real_ext.experiments.config import ConfigError, to_dict

QUICKSTART = os.path.join(os.path.dirname(__file__), "configs", "quickstart.yaml")


def _run(args) -> None:
    from real_ext.experiments.pipeline import load, run_pipeline
    from real_ext.experiments.runner import run_experiment
    from real_ext.experiments.schema import PipelineConfig
    config = load(args.config, args.overrides, args.out, args.launcher, args.address)
    if isinstance(config, PipelineConfig):
        run_pipeline(config, resume=args.resume, console=sys.stdout)
    else:
        run_experiment(config, resume=args.resume, console=sys.stdout)


def _check(args) -> None:
    from real_ext.experiments.build import build, resolve
    from real_ext.experiments.pipeline import load, stage_configs
    from real_ext.experiments.schema import PipelineConfig
    config = load(args.config, args.overrides)
    configs = stage_configs(config) if isinstance(config, PipelineConfig) else {"": config}
    earlier: list[str] = []
    for name, c in configs.items():
        try:
            resolved = resolve(c)
        except ConfigError as e:
            # A later stage reads an earlier stage's output, which exists once that stage has run.
            pending = [f for f in earlier if f in str(e) and not os.path.exists(os.path.join(f, "done.json"))]
            if not pending:
                raise
            print(f"# stage {name}: needs the output of {pending[0]}; its files are checked when it starts\n")
            earlier.append(c.out)
            continue
        earlier.append(c.out)
        with tempfile.TemporaryDirectory() as tmp:
            build(resolved, tmp)
        print(f"# stage {name}" if name else "# resolved config")
        print(yaml.safe_dump(to_dict(resolved), sort_keys=False))
    print("config OK")


def _generate(args) -> None:
    import torch

    from real_ext.data.files import DataError, load_tokenizer
    from real_ext.generation import GenerationConfig, generate
    from real_ext.model import ReaLModel
    try:
        tokenizer = load_tokenizer(args.model)
    except DataError as e:
        raise ConfigError(f"generate: {e}") from None
    try:
        model = ReaLModel.from_pretrained(args.model, device=args.device)
    except (OSError, ValueError) as e:
        raise ConfigError(f"generate: cannot load model {args.model!r} ({e})") from None
    stops = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    prompts = [tokenizer(p)["input_ids"] for p in args.prompt]
    # Default: as many tokens as the context leaves, at most 256.
    room = model.config.max_positions - max(len(p) for p in prompts)
    max_new = args.max_new_tokens or max(1, min(256, room))
    try:
        cfg = GenerationConfig(max_new_tokens=max_new, greedy=args.greedy, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p, n_samples=args.n_samples, seed=args.seed,
                               stop_token_ids=stops)
    except ValueError as e:
        raise ConfigError(f"generate: {e}") from None
    with torch.no_grad():
        out = generate(model, prompts, cfg)
    for i, ids in enumerate(out.output_ids):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        print(f"[{out.prompt_index[i]}] {args.prompt[out.prompt_index[i]]} -> {text}")


def _plan(args) -> None:
    from real_ext.experiments.build import resolve
    from real_ext.experiments.pipeline import load
    from real_ext.experiments.schema import PipelineConfig
    from real_ext.plan.cost import AnalyticCost, ProfiledCost
    from real_ext.plan.hardware import load_profile, parse_cluster
    from real_ext.plan.problem import problem_from_config
    from real_ext.plan.report import allocations_yaml, plan_table
    from real_ext.plan.search import search
    config = load(args.config, args.overrides)
    if isinstance(config, PipelineConfig):
        raise ConfigError("plan: give one experiment's config, not a pipeline")
    profile = None   # the local CPU workers are described by the measured profile
    if args.cluster.upper().endswith("CPU"):
        if not os.path.exists(args.profile):
            raise ConfigError(f"--profile: {args.profile!r} does not exist; run `real-ext profile --out "
                              f"{args.profile}` first")
        try:
            profile = load_profile(args.profile)
        except ValueError as e:
            raise ConfigError(f"--profile: {e}") from None
    try:
        hardware = parse_cluster(args.cluster, profile=profile)
    except ValueError as e:
        raise ConfigError(f"--cluster: {e}") from None
    cost = AnalyticCost(hardware) if profile is None else ProfiledCost(hardware, profile)
    # Allocations come from the search: check everything else on one worker.
    c = resolve(dataclasses.replace(config, n_workers=1, allocations={}, offload=()))
    problem = problem_from_config(c, cost)
    found = search(problem, time_budget_s=args.time, seed=args.seed)
    print(f"# {c.experiment} on {hardware.n_nodes} x {hardware.gpus_per_node} {hardware.name}")
    print(plan_table(found))
    text = allocations_yaml(found.allocations)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"allocations written to {args.out}")
    else:
        print(text)
    if args.timeline:
        found.result.draw(args.timeline, title=f"simulated: {c.experiment} on {args.cluster}")


def _profile(args) -> None:
    from real_ext.plan.profile import run_profile
    run_profile(args.out)
    print(f"profile written to {args.out}")


def _launcher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", choices=("local", "ray"), help="what starts the workers (the config's launcher)")
    p.add_argument("--address", help="launcher ray: the cluster, e.g. auto or HOST:PORT (the config's ray_address)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="real-ext", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment or pipeline config")
    run.add_argument("config")
    run.add_argument("overrides", nargs="*", help="KEY=VALUE with a dotted KEY")
    run.add_argument("--out", help="the run folder (overrides the config's out)")
    run.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    _launcher_flags(run)
    check = sub.add_parser("check", help="validate a config and print it resolved; starts nothing")
    check.add_argument("config")
    check.add_argument("overrides", nargs="*")
    quick = sub.add_parser("quickstart", help="SFT -> reward model -> PPO on the built-in sort task, 4 workers")
    quick.add_argument("overrides", nargs="*")
    quick.add_argument("--out", default="runs/quickstart")
    quick.add_argument("--resume", action="store_true")
    _launcher_flags(quick)
    gen = sub.add_parser("generate", help="sample from a Hugging Face checkpoint folder")
    gen.add_argument("model")
    gen.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    gen.add_argument("--max-new-tokens", type=int, default=None, help="default: what the context leaves, <= 256")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--greedy", action="store_true")
    gen.add_argument("--n-samples", type=int, default=1)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default="cpu")
    plan = sub.add_parser("plan", help="search an execution plan for a config on a cluster")
    plan.add_argument("config")
    plan.add_argument("overrides", nargs="*")
    plan.add_argument("--cluster", required=True, help="NODESxGPUSxTYPE, e.g. 16x8xH100, or 1x4xCPU (profiled)")
    plan.add_argument("--time", type=float, default=30.0, help="search time budget in seconds")
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--out", help="write the allocations YAML here")
    plan.add_argument("--timeline", help="write the simulated timeline PNG here")
    plan.add_argument("--profile", default="runs/profile.json", help="for CPU clusters: `real-ext profile` output")
    prof = sub.add_parser("profile", help="measure this machine's per-layer costs for the planner")
    prof.add_argument("--out", default="runs/profile.json")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.command == "quickstart":
        args.config = QUICKSTART
        args.command = "run"
    try:
        {"run": _run, "check": _check, "generate": _generate, "plan": _plan, "profile": _profile}[args.command](args)
    except ConfigError as e:
        print(f"real-ext: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
