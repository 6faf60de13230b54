"""The plan search checked against reality on this machine: the quickstart's
PPO experiment (tiny models, 4 local CPU workers) under several allocations,
each run for real (seconds per step, the mean of the steps after the first
two) and simulated with the profiled cost model (`real-ext profile`), then the
searched plan run and compared with the symmetric and disjoint baselines.

    python bench/bench_plan.py [--rounds 2] [--steps 8] [--profile PATH] [--search-time 20]

This machine's speed drifts by 10-50% over minutes (other tenants of the
host): a profile only describes the minutes around it. So each round first
profiles the machine, then simulates and measures every allocation with that
profile; the table gives each allocation's median over the rounds. The plan is
searched once, on the first round's profile. `--profile PATH` uses one saved
profile for every round instead.

Prints, per allocation and round, each MFC's measured (runtime trace) and
simulated run time, then a markdown table: measured and simulated seconds per
step, the error, the median error, and the searched plan's measured speed-up
over the baselines. `--workers 1` puts every MFC on one worker: the cost model
alone, without workers sharing cores.
"""
import argparse
import collections
import dataclasses
import json
import os
import statistics
import tempfile

from real_ext.experiments.build import local_cost, resolve
from real_ext.experiments.config import from_dict
from real_ext.experiments.runner import run_experiment
from real_ext.experiments.schema import ExperimentConfig
from real_ext.plan.problem import problem_from_config
from real_ext.plan.profile import run_profile
from real_ext.plan.search import disjoint, search, symmetric
from real_ext.runtime.spec import Allocation

ALL = [0, 1, 2, 3]
EXPERIMENT = {
    "experiment": "ppo", "n_workers": 4,
    "actor": {"init": {"task": "sort"}, "optimizer": {"lr": 2e-4}},
    "critic": {"init": {"task": "sort", "seed": 1}, "optimizer": {"lr": 1e-3}},
    "reward": {"init": {"task": "sort", "seed": 2}},
    "data": {"task": "sort", "task_options": {"min_len": 3, "max_len": 5}, "n": 1024},
    "generation": {"max_new_tokens": 8, "stop_at_eos": False},   # fixed lengths: the simulator plans the maximum
    "ppo": {"batch_size": 64, "n_minibatches": 4},
    "log": {"tensorboard": False, "timeline": False},
}
A = Allocation
HAND = {   # MFC -> allocation; MFCs not named run on all 4 workers, dp=4
    "all dp=4 (symmetric)": {},
    "quickstart (ReaL)": {"actor_train": A((0, 1), tp=2), "ref_inf": A((0, 1), dp=2), "critic_inf": A((2, 3), tp=2),
                          "critic_train": A((2, 3), tp=2), "reward_inf": A((2, 3), dp=2)},
    "train tp=2 on halves": {"actor_train": A((0, 1), tp=2), "critic_train": A((2, 3), tp=2)},
    "train pp=2, inference dp=2": {"actor_train": A((0, 1), pp=2, n_microbatches=2),
                                   "critic_train": A((2, 3), pp=2, n_microbatches=2),
                                   "ref_inf": A((0, 1), dp=2), "critic_inf": A((2, 3), dp=2),
                                   "reward_inf": A((2, 3), dp=2)},
    "all tp=2 dp=2": {n: A(tuple(ALL), dp=2, tp=2) for n in ("actor_gen", "actor_train", "critic_train",
                                                             "ref_inf", "critic_inf", "reward_inf")},
    "disjoint by model": {"actor_gen": A((0, 1), dp=2), "actor_train": A((0, 1), dp=2),
                          "critic_inf": A((2,)), "critic_train": A((2,)), "ref_inf": A((3,)), "reward_inf": A((3,))},
}


def config(allocations: dict, out: str) -> ExperimentConfig:
    c = from_dict(ExperimentConfig, dict(EXPERIMENT, out=out))
    return dataclasses.replace(c, allocations=dict(allocations))


def measure(c: ExperimentConfig, steps: int) -> tuple[float, dict[str, float]]:
    """Mean seconds per step after the first two, and each MFC's median run
    time (its spans in the runtime's trace, longest worker per call)."""
    c = dataclasses.replace(c, steps=steps)
    run_experiment(c, console=open(os.devnull, "w"))
    with open(os.path.join(c.out, "stats.jsonl")) as f:
        times = [json.loads(line)["time_s"] for line in f if '"time_s"' in line]
    with open(os.path.join(c.out, "trace.json")) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and e["cat"] == "run"]
    return statistics.mean(times[2:]), _median_runs((e["name"], e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6)
                                                    for e in events)


def _median_runs(spans) -> dict[str, float]:
    """MFC name -> median duration of its calls; a call's spans on several
    workers (same name, overlapping) count once, as the longest."""
    calls: dict[str, list[list[float]]] = {}
    for name, start, end in sorted(spans, key=lambda s: s[1]):
        mine = calls.setdefault(name, [])
        if mine and start < mine[-1][1]:
            mine[-1][1] = max(mine[-1][1], end)
        else:
            mine.append([start, end])
    return {name: statistics.median(e - s for s, e in c[2:] or c) for name, c in calls.items()}


def _each(xs) -> str:
    return ", ".join(f"{x:.3f}" for x in xs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--profile", default=None, help="a saved profile for every round (default: profile each round)")
    p.add_argument("--search-time", type=float, default=20.0)
    p.add_argument("--workers", type=int, choices=(1, 4), default=4)
    args = p.parse_args()
    if args.workers == 1:
        EXPERIMENT["n_workers"] = 1
        HAND.clear()
        HAND["one worker"] = {n: A((0,)) for n in ("actor_gen", "reward_inf", "ref_inf", "critic_inf",
                                                 "actor_train", "critic_train")}
    tmp = tempfile.mkdtemp(prefix="bench_plan_")
    plans = dict(HAND)
    found = None
    measured, simulated = collections.defaultdict(list), collections.defaultdict(list)   # name -> per round
    for r in range(args.rounds):
        profile = args.profile or os.path.join(tmp, f"profile_{r}.json")
        if args.profile is None:
            run_profile(profile)
        base = resolve(dataclasses.replace(config({}, tmp), plan=dataclasses.replace(
            from_dict(ExperimentConfig, dict(EXPERIMENT)).plan, profile=profile)))
        problem = problem_from_config(base, local_cost(base))
        if found is None and args.workers > 1:   # on one worker there is nothing to search
            found = search(problem, time_budget_s=args.search_time)
            plans.update({"searched": found.allocations, "symmetric baseline (search's)": symmetric(problem)[0],
                          "disjoint baseline (search's)": disjoint(problem)[0]})
        for name, allocations in plans.items():
            c = resolve(config(allocations, os.path.join(tmp, f"{r}_" + name.replace(" ", "_").replace("/", "_"))))
            sim = problem.evaluate(c.allocations)
            m, mfc_measured = measure(c, args.steps)
            measured[name].append(m)
            simulated[name].append(sim.iteration_time)
            mfc_sim = _median_runs((n, s, e) for _, kind, n, s, e in sim.spans if kind == "run")
            print(f"round {r + 1}, {name}: measured {m:.3f} s/step, simulated {sim.iteration_time:.3f}; per MFC "
                  f"measured/simulated: " + ", ".join(f"{n} {mfc_measured[n]:.3f}/{mfc_sim[n]:.3f}" for n in mfc_sim
                                                     if n in mfc_measured), flush=True)
    rows = [(name, statistics.median(measured[name]), statistics.median(simulated[name])) for name in plans]
    errors = [abs(s - m) / m for _, m, s in rows]
    print("\n| allocation | measured s/step (each round) | simulated (each round) | error of the medians |\n"
          "|---|---|---|---|")
    for (name, m, s), e in zip(rows, errors):
        print(f"| {name} | {m:.3f} ({_each(measured[name])}) | {s:.3f} ({_each(simulated[name])}) | {e:.0%} |")
    print(f"\nmedian error {statistics.median(errors):.0%} over {len(rows)} allocations, {args.rounds} round(s)")
    if found is None:
        return
    by_name = {name: m for name, m, _ in rows}
    sym, dis = (by_name[f"{shape} baseline (search's)"] / by_name["searched"] for shape in ("symmetric", "disjoint"))
    print(f"searched plan measured {sym:.2f}x the symmetric and {dis:.2f}x the disjoint baseline\n\n"
          f"searched allocations:")
    for name, a in found.allocations.items():
        print(f"  {name}: mesh {list(a.mesh)} dp={a.dp} tp={a.tp} pp={a.pp} mb={a.n_microbatches}")


if __name__ == "__main__":
    main()
