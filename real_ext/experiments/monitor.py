"""What a run shows while it goes, once per step: a JSON line in
out_dir/stats.jsonl, TensorBoard scalars under out_dir/tensorboard/, wandb
when asked, and a progress line on the console (bar, step/total, elapsed,
ETA, the chosen stats). Eval stats go to the same sinks."""
from __future__ import annotations

import json
import math
import os
import sys
import time

BAR_WIDTH = 20
WANDB_MISSING = "wandb: true but wandb is not installed; pip install wandb or set log.wandb: false"


def _plain(key: str, value):
    """``value`` with numpy/torch scalars made Python numbers; a clear error
    for what a log line cannot hold."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(key, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(f"{key}/{k}", v) for k, v in value.items()}
    raise TypeError(f"stats[{key!r}] is a {type(value).__name__}; log numbers, strings, lists or dicts")


def _json_safe(value):
    """Strict JSON has no NaN or infinity: those become "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _scalars(record: dict) -> dict[str, float]:
    """The numeric entries, less "step"."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _compact(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class RunMonitor:
    """The runner's per-step sinks; a context manager that closes them."""

    def __init__(self, out_dir: str, total_steps: int, *, tensorboard: bool = True, wandb: bool = False,
                 wandb_project: str | None = None, config: dict | None = None, start_step: int = 0,
                 console=sys.stdout, keys: tuple[str, ...] = ("reward/mean", "actor_train/loss")):
        """``start_step``: the first step this run logs (a resumed run's checkpoint
        step); ``config`` is recorded by wandb; ``keys`` are the stats shown on
        the progress line, those present in a step's stats."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        if not 0 <= start_step <= total_steps:
            raise ValueError(f"start_step must be in [0, total_steps={total_steps}], got {start_step}")
        self.out_dir, self.total_steps, self.start_step = os.fspath(out_dir), total_steps, start_step
        self.console, self.keys = console, tuple(keys)
        self.tensorboard = tensorboard
        os.makedirs(self.out_dir, exist_ok=True)
        self.stats_path = os.path.join(self.out_dir, "stats.jsonl")
        self._file = open(self.stats_path, "a")
        self._writer = None          # created on first use, so truncate_after can set its purge step
        self._purge_step: int | None = None
        self._wandb_run = None
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                self._file.close()
                raise ImportError(WANDB_MISSING) from None
            self._wandb_run = wandb_lib.init(project=wandb_project, config=config, dir=self.out_dir,
                                             name=os.path.basename(os.path.abspath(self.out_dir)))
        self._t0 = time.monotonic()
        self._step_times: list[float] = []
        self._redraw = bool(getattr(console, "isatty", lambda: False)())
        self._line_open = False      # a redrawn progress line awaits its newline

    # ------------------------------------------------------------ sinks

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(_json_safe(record), allow_nan=False) + "\n")
        self._file.flush()
        scalars = _scalars(record)
        if self.tensorboard:
            writer = self._tensorboard()
            for key, value in scalars.items():
                writer.add_scalar(key, value, global_step=record["step"])
            writer.flush()      # so TensorBoard shows a long run's steps as they come
        if self._wandb_run is not None:
            self._wandb_run.log(scalars, step=record["step"])

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step makes TensorBoard drop a previous attempt's points from that step on.
            self._writer = SummaryWriter(os.path.join(self.out_dir, "tensorboard"), purge_step=self._purge_step)
            self._purge_step = None
        return self._writer

    def _print(self, line: str, redraw: bool) -> None:
        if self._redraw and redraw:
            self.console.write("\r" + line + "\x1b[K")
            self._line_open = True
        else:
            self._end_line()
            self.console.write(line + "\n")
        self.console.flush()

    def _end_line(self) -> None:
        """Leave a redrawn progress line in place before other output."""
        if self._line_open:
            self.console.write("\n")
            self.console.flush()
            self._line_open = False

    @staticmethod
    def _record(stats: dict, required: tuple[str, ...], what: str) -> dict:
        missing = [k for k in required if k not in stats]
        if missing:
            raise ValueError(f"{what} stats lack {missing}; they have {sorted(stats)[:10]}")
        if isinstance(stats["step"], bool) or not isinstance(stats["step"], int):
            raise ValueError(f"{what} stats: step must be an int (0-based), got {stats['step']!r}")
        return {str(k): _plain(str(k), v) for k, v in {"step": stats["step"], **stats}.items()}

    # ------------------------------------------------------------ public

    def log(self, stats: dict) -> None:
        """One training step's stats: at least "step" (0-based) and "time_s"."""
        record = self._record(stats, ("step", "time_s"), "step")
        if record["step"] < self.start_step:
            raise ValueError(f"step {record['step']} precedes start_step={self.start_step}: this run resumed "
                             "after it, and its line is already in stats.jsonl")
        self._write(record)
        self._step_times.append(float(stats["time_s"]))
        self._print(self._progress_line(record), redraw=True)
        if record["step"] + 1 >= self.total_steps:
            self._end_line()

    def _progress_line(self, record: dict) -> str:
        done = record["step"] + 1
        frac = min(done / self.total_steps, 1.0)
        filled = round(BAR_WIDTH * frac)
        mean = sum(self._step_times) / len(self._step_times) if self._step_times else 0.0
        eta = mean * max(self.total_steps - done, 0)
        shown = "  ".join(f"{k} {_compact(record[k])}" for k in self.keys if k in record)
        line = (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self.total_steps} {100 * frac:3.0f}% | "
                f"elapsed {_clock(time.monotonic() - self._t0)}  ETA {_clock(eta)}  {mean:.3g} s/step")
        return line + (f" | {shown}" if shown else "")

    def log_eval(self, stats: dict) -> None:
        """Eval stats, with "step": the training step they follow."""
        record = self._record(stats, ("step",), "eval")
        self._write(record)
        shown = "  ".join(f"{k} {_compact(v)}" for k, v in record.items() if k != "step")
        self._print(f"eval after step {record['step'] + 1}/{self.total_steps} | {shown}", redraw=False)

    def truncate_after(self, step: int) -> None:
        """Resume at ``step``: keep only stats.jsonl lines of earlier steps (a
        rewrite, atomic), and have TensorBoard drop its points from ``step`` on."""
        self._file.close()
        with open(self.stats_path) as f:
            lines = f.read().splitlines()
        kept = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    continue     # a line cut short by a crash mid-write
                raise ValueError(f"{self.stats_path}:{i + 1} is not JSON: {line[:80]!r}") from None
            if record["step"] < step:
                kept.append(line + "\n")
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.stats_path)
        self._file = open(self.stats_path, "a")
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._purge_step = step

    def close(self) -> None:
        self._end_line()
        self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> "RunMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
