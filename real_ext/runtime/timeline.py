"""The execution-timeline picture of a run, as in the ReaL paper: one row per
worker, time in seconds across, a coloured bar per MFC call, hatched bars for
parameter reallocation (and free / offload / reload) and for data transfer,
white where a worker idles. It reads the Chrome trace of real_ext/runtime/trace.py;
`timeline_summary` gives the same picture as numbers for the run's log."""
from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

# Spans that are not MFC runs: legend label and hatch, in legend order.
# Offload and reload share one entry; they are the two halves of one mechanism.
OVERHEAD = {
    "realloc": ("parameter reallocation", "////"),
    "free": ("free reallocated copy", "\\\\\\\\"),
    "offload": ("offload / reload", "xxx"),
    "reload": ("offload / reload", "xxx"),
    "transfer": ("data transfer", "...."),
    "save": ("save", "++"),
}
OVERHEAD_FACE, HATCH_COLOUR, OTHER_FACE = "#e4e4e4", "#303030", "#9a9a9a"
# The master clears every worker's store at the end of each graph run (a
# training step or an eval batch): those spans are the step boundaries.
STEP_END_KIND = "clear"

DPI, WIDTH_IN = 100, 12.0
ROW_IN, LEFT_IN, RIGHT_IN, TOP_IN, XAXIS_IN, LEGEND_ROW_IN = 0.45, 0.9, 0.25, 0.45, 0.55, 0.27
LEGEND_COLUMNS = 5
MIN_BAR_PX = 2.0   # a 50 us transfer in a 60 s run is still a visible sliver


@dataclasses.dataclass(frozen=True)
class Span:
    worker: int
    kind: str      # run / transfer / realloc / free / offload / reload / clear / save
    name: str      # the MFC for a run, e.g. "actor_gen"; "actor:realloc", "actor_train:data" ...
    start: float   # seconds since the first span began
    end: float


def load_spans(trace) -> list[Span]:
    """The complete ("X") spans of a trace given as a path to its JSON, the
    {"traceEvents": [...]} dict, or the list of events; time starts at 0."""
    where = os.fspath(trace) if isinstance(trace, (str, os.PathLike)) else "trace"
    events = _events(trace, where)
    raw = []
    for i, e in enumerate(events):
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        try:
            start = float(e["ts"]) / 1e6
            raw.append((int(e["tid"]), str(e["cat"]), str(e["name"]), start, start + float(e["dur"]) / 1e6))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: event {i} is not a real_ext span (needs tid, cat, name, ts, dur; "
                             f"{type(err).__name__}: {err}): {e!r}") from None
    if not raw:
        raise ValueError(f"{where}: empty trace, no complete ('X') spans to draw")
    # Trace.add takes its origin from the first reply it sees, not the earliest span.
    t0 = min(r[3] for r in raw)
    spans = [Span(w, kind, name, start - t0, end - t0) for w, kind, name, start, end in raw]
    if max(s.end for s in spans) <= 0:
        raise ValueError(f"{where}: the spans cover no time (every duration is 0)")
    return spans


def _events(trace, where: str) -> list:
    if isinstance(trace, (str, os.PathLike)):
        try:
            with open(trace) as f:
                trace = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{where}: not a Chrome trace (not JSON: {err})") from None
    if isinstance(trace, dict):
        if not isinstance(trace.get("traceEvents"), list):
            raise ValueError(f"{where}: not a Chrome trace (no \"traceEvents\" list; keys {sorted(trace)[:8]})")
        trace = trace["traceEvents"]
    if not isinstance(trace, list):
        raise ValueError(f"{where}: not a Chrome trace (a {type(trace).__name__}, expected a path, "
                         f"a {{\"traceEvents\": [...]}} dict or a list of events)")
    return trace


def step_ends(spans: list[Span]) -> list[float]:
    """When each graph run ended: the k-th boundary is the last end among the
    workers' k-th clear spans (every worker takes part in every clear)."""
    per_worker = defaultdict(list)
    for s in spans:
        if s.kind == STEP_END_KIND:
            per_worker[s.worker].append(s)
    rounds = zip(*(sorted(v, key=lambda s: s.start) for v in per_worker.values()))
    return [max(s.end for s in r) for r in rounds]


def _union_length(intervals) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def timeline_summary(trace) -> dict:
    """duration_s (first span start to last end); steps (graph runs completed);
    busy_fraction per worker (its spans' union over the duration); mfc_s per MFC
    and overhead_s per other span kind: wall-clock seconds during which at least
    one worker was in such a span, over the whole trace."""
    spans = load_spans(trace)
    duration = max(s.end for s in spans)
    by_worker, by_mfc, by_kind = defaultdict(list), defaultdict(list), defaultdict(list)
    for s in spans:
        by_worker[s.worker].append((s.start, s.end))
        (by_mfc[s.name] if s.kind == "run" else by_kind[s.kind]).append((s.start, s.end))
    n_workers = max(by_worker) + 1
    return {"duration_s": duration, "steps": len(step_ends(spans)),
            "busy_fraction": {w: _union_length(by_worker[w]) / duration for w in range(n_workers)},
            "mfc_s": {name: _union_length(v) for name, v in by_mfc.items()},
            "overhead_s": {kind: _union_length(v) for kind, v in by_kind.items()}}


def _styles(spans: list[Span]) -> dict:
    """Bar style per key (an MFC name for runs, else the span kind) -> (label, kwargs)."""
    mfcs = list(dict.fromkeys(s.name for s in spans if s.kind == "run"))   # first-run order
    palette = matplotlib.colormaps["tab10" if len(mfcs) <= 10 else "tab20"]
    styles = {name: (name, dict(facecolor=palette(i % palette.N), edgecolor="none")) for i, name in enumerate(mfcs)}
    kinds = {s.kind for s in spans if s.kind not in ("run", STEP_END_KIND)}
    for kind in [k for k in OVERHEAD if k in kinds] + sorted(kinds - OVERHEAD.keys()):
        label, hatch = OVERHEAD.get(kind, (kind, None))
        styles[kind] = (label, dict(facecolor=OVERHEAD_FACE if hatch else OTHER_FACE, hatch=hatch,
                                    hatchcolor=HATCH_COLOUR, edgecolor="none"))
    return styles


def _legend(styles: dict, step_lines: bool) -> list:
    handles = []
    for label in dict.fromkeys(label for label, _ in styles.values()):
        kwargs = next(kw for lab, kw in styles.values() if lab == label)
        # An outlined swatch: a hatched one would not stand out from the white legend otherwise.
        handles.append(Patch(label=label, **{**kwargs, "edgecolor": HATCH_COLOUR if kwargs.get("hatch") else "none"}))
    if step_lines:
        handles.append(Line2D([], [], color="black", linewidth=0.8, linestyle="--",
                              label="end of step (or eval batch)"))
    return handles


def draw_timeline(trace_path_or_events, png_path: str, *, title: str | None = None,
                  last_steps: int | None = None) -> str:
    """Draw the timeline PNG (written atomically) and return its path.
    ``last_steps`` shows only the last that many graph runs (and what came
    after them) when the trace has more: a long run's steady state at a
    readable scale. A dashed line marks each graph run's end."""
    spans = load_spans(trace_path_or_events)
    ends = step_ends(spans)
    t_start = 0.0
    if last_steps is not None:
        if last_steps < 1:
            raise ValueError(f"last_steps must be at least 1, got {last_steps}")
        if len(ends) > last_steps:
            t_start = ends[-last_steps - 1]
            ends = ends[-last_steps:]
            spans = [s for s in spans if s.end > t_start]
    t_end = max(s.end for s in spans)
    n_workers = max(s.worker for s in spans) + 1
    styles = _styles(spans)

    n_labels = len({label for label, _ in styles.values()}) + bool(ends)
    legend_rows = -(-n_labels // LEGEND_COLUMNS)
    bottom_in = XAXIS_IN + legend_rows * LEGEND_ROW_IN
    rows_in = max(n_workers * ROW_IN, 1.0)
    height_in = TOP_IN + rows_in + bottom_in
    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    axes_w_in = WIDTH_IN - LEFT_IN - RIGHT_IN
    ax = fig.add_axes((LEFT_IN / WIDTH_IN, bottom_in / height_in, axes_w_in / WIDTH_IN, rows_in / height_in))
    min_width = MIN_BAR_PX * (t_end - t_start) / (axes_w_in * DPI)

    bars = defaultdict(list)
    for s in spans:
        if s.kind != STEP_END_KIND:
            bars[(s.worker, s.name if s.kind == "run" else s.kind)].append((s.start, max(s.end - s.start, min_width)))
    for (worker, key), ranges in bars.items():
        ax.broken_barh(ranges, (worker - 0.4, 0.8), **styles[key][1])
    for t in ends:
        ax.axvline(t, color="black", linewidth=0.8, linestyle="--", alpha=0.7)

    ax.set_xlim(t_start, t_end)
    ax.set_ylim(n_workers - 0.5, -0.5)   # worker 0 on top
    ax.set_yticks(range(n_workers), [f"worker {w}" for w in range(n_workers)])
    ax.set_xlabel("time (s)")
    ax.set_title(title or f"execution timeline: {n_workers} workers, {t_end - t_start:.2f} s")
    fig.legend(handles=_legend(styles, bool(ends)), loc="lower center", ncols=LEGEND_COLUMNS, frameon=False,
               bbox_to_anchor=(0.5, 0.0), fontsize="small")

    png_path = os.fspath(png_path)
    tmp = png_path + ".tmp"
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, png_path)
    return png_path
