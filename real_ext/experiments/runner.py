"""Run one experiment from its config, leaving the run folder every
experiment writes (``out``):

    config.yaml      the resolved config (every default filled in)
    stats.jsonl      one JSON object per step ("step", "time_s", the algorithm's stats; eval lines too)
    tensorboard/     event files of the same stats
    trace.json       the runtime's Chrome trace (https://ui.perfetto.dev)
    timeline.png     one row per worker: MFC runs, reallocations, transfers, idle time
    logs/            launcher ray: each worker's output (worker_R.log)
    checkpoints/     resumable checkpoints (real_ext/experiments/checkpoint.py)
    models/<model>   the trained models at the end, Hugging Face format
    tokenizer/       a fresh model's tokenizer (built-in task models only)
    done.json        written last: the run finished

Everything is checked before any worker starts. With ``resume`` the run
continues from its last complete checkpoint; on CPU the resumed steps repeat
the uninterrupted run's exactly.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from real_ext.experiments import checkpoint
from real_ext.experiments.build import build, resolve
from real_ext.experiments.config import ConfigError, dump_yaml, read_yaml, to_dict
from real_ext.experiments.schema import ExperimentConfig

TIMELINE_STEPS = 3
CONSOLE_KEYS = {
    "ppo": ("reward/mean", "monitor_reward/mean", "actor_train/loss", "critic_train/loss", "actor_train/kl"),
    "grpo": ("reward/mean", "actor_train/loss"),
    "remax": ("reward/mean", "greedy_reward/mean", "actor_train/loss"),
    "sft": ("actor_train/loss",),
    "rw": ("rw_train/loss", "rw_train/acc"),
    "dpo": ("actor_train/loss", "actor_train/reward_acc"),
}


def _check_writable(out: str) -> None:
    try:
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        probe = os.path.join(out, "checkpoints", ".write-probe")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"out: cannot write the run folder {out!r} ({e.strerror}); choose another --out") from None


def _resume_point(c: ExperimentConfig, root: str):
    """(checkpoint folder, its master state) to resume from, or (None, None);
    ConfigError when it cannot fit this config."""
    steps = checkpoint.complete(root)
    if not steps:
        return None, None
    folder = checkpoint.path_of(root, steps[-1])
    try:
        state = checkpoint.verify(folder)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"resume: {e}") from None
    saved = read_yaml(os.path.join(folder, "config.yaml"))
    for field in ("experiment", "n_workers"):
        if saved.get(field) != to_dict(getattr(c, field)):
            raise ConfigError(f"resume: {field} was {saved.get(field)!r} in checkpoint {folder}, now "
                              f"{to_dict(getattr(c, field))!r}; resume with the same {field}")
    for name, alloc in c.allocations.items():
        if name.endswith("_train") and saved.get("allocations", {}).get(name) != to_dict(alloc):
            raise ConfigError(f"resume: allocations.{name} differs from checkpoint {folder} (its optimizer "
                              f"state is sharded by that allocation); keep {saved.get('allocations', {}).get(name)}")
    if state["step"] > c.steps:
        raise ConfigError(f"resume: checkpoint {folder} is at step {state['step']}, beyond steps={c.steps}")
    return folder, state


def run_experiment(config: ExperimentConfig, *, resume: bool = False, console=None) -> dict:
    """Run (or resume) the experiment; returns the last step's and eval's stats."""
    from real_ext.experiments.monitor import RunMonitor
    from real_ext.runtime import Master
    console = console or sys.stdout
    c = resolve(config)
    out = c.out
    _check_writable(out)
    root = os.path.join(out, "checkpoints")
    if not resume and (checkpoint.complete(root) or os.path.exists(os.path.join(out, "done.json"))):
        raise ConfigError(f"out: {out!r} already holds a run; pass --resume to continue it or choose another --out")
    built = build(c, os.path.join(out, "tokenizer"))
    folder, state = _resume_point(c, root) if resume else (None, None)
    start = state["step"] if state else 0
    if folder:  # trained models start from the checkpoint's parameters
        for name in built.trained:
            built.models[name] = dataclasses.replace(built.models[name], path=os.path.join(folder, "models", name),
                                                    config=None)
    if os.path.exists(os.path.join(out, "done.json")):
        os.remove(os.path.join(out, "done.json"))   # resuming a finished run to train further
    resolved = to_dict(c)
    dump_yaml(resolved, os.path.join(out, "config.yaml"))
    keys = c.log.console_keys or CONSOLE_KEYS[c.experiment]
    last, evals = {}, {}
    monitor = RunMonitor(out, c.steps, tensorboard=c.log.tensorboard, wandb=c.log.wandb,
                         wandb_project=c.log.wandb_project, config=resolved, start_step=start, console=console,
                         keys=keys)
    with monitor, Master(built.models, built.algorithm, built.dataset, c.n_workers, device=c.device,
                         threads_per_worker=c.threads_per_worker, offload=c.offload,
                         eval_dataset=built.eval_dataset, launcher=_launcher(c, console)) as master:
        monitor.truncate_after(start)   # lines of steps after the checkpoint (or of a crashed fresh start)
        print(f"[{c.experiment}] data: {json.dumps(built.data_report)}", file=console, flush=True)
        if folder:
            master.load_states(built.trained, folder)
            master.step_count = start
            if state["algorithm"]:
                built.algorithm.load_state_dict(state["algorithm"])
            print(f"[{c.experiment}] resumed from {folder} (step {start})", file=console, flush=True)
        for step in range(start, c.steps):
            last = master.step()
            monitor.log(last)
            done = step + 1
            if c.eval.every and done % c.eval.every == 0 and built.eval_dataset is not None:
                evals = dict(master.evaluate(), step=done - 1)
                monitor.log_eval(evals)
            if c.checkpoint.every and done % c.checkpoint.every == 0 and done < c.steps:
                checkpoint.save(master, root, done, built.trained, resolved, c.checkpoint.keep)
                _write_trace(master, out, c.log.timeline)
        if built.eval_dataset is not None and not (c.eval.every and c.steps % c.eval.every == 0):
            evals = dict(master.evaluate(), step=c.steps - 1)
            monitor.log_eval(evals)
        final = checkpoint.save(master, root, c.steps, built.trained, resolved, c.checkpoint.keep)
        _write_trace(master, out, c.log.timeline)
    checkpoint.link_models(final, os.path.join(out, "models"))
    summary = {"steps": c.steps, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "last": last, "eval": evals}
    with open(os.path.join(out, "done.json.tmp"), "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(os.path.join(out, "done.json.tmp"), os.path.join(out, "done.json"))
    return summary


def _launcher(c: ExperimentConfig, console):
    """What starts the workers (None: the Master's default, local processes)."""
    if c.launcher == "local":
        return None
    import functools
    from real_ext.runtime.ray_launcher import RayLauncher
    return functools.partial(RayLauncher, address=c.ray_address, log_dir=os.path.join(c.out, "logs"),
                             console=console)


def _write_trace(master, out: str, timeline: bool) -> None:
    path = os.path.join(out, "trace.json")
    master.trace.write(path)
    if timeline:
        from real_ext.runtime.timeline import draw_timeline
        # The last few graph runs (training steps, eval batches): one step is a
        # few pixels wide in a whole run's picture.
        draw_timeline(path, os.path.join(out, "timeline.png"), last_steps=TIMELINE_STEPS,
                      title=f"{os.path.basename(os.path.abspath(out))}: the last {TIMELINE_STEPS} graph runs")
