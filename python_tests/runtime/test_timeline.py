"""The execution-timeline picture and summary: drawn from the trace of a real
one-step PPO run on 2 workers, and from small made-up traces for cutting at a
step, very short spans and malformed input."""
from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread

from python_tests.runtime import experiments as ex
from real_ext.runtime import Allocation, Master
from real_ext.runtime.timeline import draw_timeline, timeline_summary

# Generation on both workers, the actor trained on worker 0 and everything else
# on worker 1: the trace has runs, reallocation, free, transfer and offload/reload.
TWO_WORKERS = {"actor_gen": Allocation((0, 1), dp=2), "actor_train": Allocation((0,)),
               "critic_inf": Allocation((1,)), "critic_train": Allocation((1,)),
               "ref_inf": Allocation((1,)), "reward_inf": Allocation((1,))}


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("timeline") / "trace.json"
    with Master(ex.ppo_models(), ex.ppo(TWO_WORKERS, batch_size=8), ex.prompts(), 2, offload=("ref",)) as master:
        master.step()
        master.trace.write(str(path))
    return path


def _colours(img, min_pixels: int = 20) -> set:
    """Opaque colours covering at least ``min_pixels`` pixels (anti-aliased edges left out)."""
    rgb = np.round(img[..., :3] * 255).astype(np.int64).reshape(-1, 3)
    values, counts = np.unique(rgb, axis=0, return_counts=True)
    return {tuple(v) for v, c in zip(values, counts) if c >= min_pixels}


def _span(worker, kind, name, start_s, dur_s):
    return {"ph": "X", "pid": 0, "tid": worker, "cat": kind, "name": name, "ts": start_s * 1e6, "dur": dur_s * 1e6}


def _steps(n: int) -> list[dict]:
    """n steps of 1 s on 2 workers, each ending with a clear on both."""
    events = []
    for k in range(n):
        events += [_span(0, "run", "actor_gen", k, 0.5), _span(1, "transfer", "actor_train:data", k + 0.5, 0.2),
                   _span(1, "run", "actor_train", k + 0.7, 0.25)]
        events += [_span(w, "clear", "clear", k + 0.95, 0.05) for w in (0, 1)]
    return events


def test_real_run_picture(trace_path, tmp_path):
    png = tmp_path / "timeline.png"
    assert draw_timeline(trace_path, png, title="PPO, 2 workers") == str(png)
    img = imread(png)
    assert img.shape[1] == 1200 and img.shape[2] == 4 and 150 < img.shape[0] < 400
    # Six MFC colours, the hatch grey, white and the text black at least.
    assert len(_colours(img)) >= 9
    assert not (tmp_path / "timeline.png.tmp").exists()


def test_real_run_summary(trace_path):
    summary = timeline_summary(trace_path)
    assert set(summary["mfc_s"]) == set(ex.PPO_MFCS)
    assert all(t > 0 for t in summary["mfc_s"].values())
    assert set(summary["busy_fraction"]) == {0, 1}
    assert all(0 < f <= 1 for f in summary["busy_fraction"].values())
    assert {"realloc", "transfer", "offload", "reload"} <= set(summary["overhead_s"])
    assert summary["steps"] == 1 and summary["duration_s"] > 0


def test_summary_of_known_spans():
    summary = timeline_summary(_steps(2))
    assert summary["duration_s"] == pytest.approx(2.0)
    assert summary["steps"] == 2
    assert summary["busy_fraction"][0] == pytest.approx(0.55)   # 0.5 s run + 0.05 s clear per step
    assert summary["busy_fraction"][1] == pytest.approx(0.50)
    assert summary["mfc_s"] == pytest.approx({"actor_gen": 1.0, "actor_train": 0.5})
    assert summary["overhead_s"]["transfer"] == pytest.approx(0.4)


def _columns_of(png, colour) -> np.ndarray:
    """x pixels where ``colour`` shows in the axes (the top of the picture; the legend is at the bottom)."""
    img = imread(png)
    top = img[: int(0.6 * img.shape[0]), :, :3]
    return np.nonzero(np.all(np.abs(top - np.array(colour[:3])) < 0.02, axis=-1).any(axis=0))[0]


def _runs(columns: np.ndarray) -> int:
    return 1 + int((np.diff(columns) > 1).sum())


def test_last_steps_shows_the_end_of_the_run(tmp_path):
    whole, cut = tmp_path / "whole.png", tmp_path / "cut.png"
    draw_timeline({"traceEvents": _steps(3)}, whole)
    draw_timeline({"traceEvents": _steps(3)}, cut, last_steps=1)
    first = matplotlib.colormaps["tab10"](0)     # actor_gen, the first MFC to run
    one, three = _columns_of(cut, first), _columns_of(whole, first)
    # The last 1 of 3 steps, the axes show 1 s: one actor_gen bar, half as wide as
    # the axes. Whole, they show 3 s: three bars, each a sixth as wide.
    assert _runs(one) == 1 and _runs(three) == 3
    assert len(one) == pytest.approx(len(three), rel=0.05)
    with pytest.raises(ValueError, match="last_steps"):
        draw_timeline(_steps(1), cut, last_steps=0)


def test_a_very_short_span_is_still_drawn(tmp_path):
    events = [_span(0, "run", "long", 0.0, 60.0), _span(1, "run", "blip", 30.0, 1e-6)]
    png = tmp_path / "short.png"
    draw_timeline(events, png)
    columns = _columns_of(png, matplotlib.colormaps["tab10"](1))
    assert len(columns) >= 1 and columns.max() - columns.min() < 10


def test_rows_grow_with_workers(tmp_path):
    few, many = tmp_path / "few.png", tmp_path / "many.png"
    draw_timeline([_span(w, "run", "a", 0, 1) for w in range(2)], few)
    draw_timeline([_span(w, "run", "a", 0, 1) for w in range(8)], many)
    assert imread(many).shape[0] > imread(few).shape[0]


@pytest.mark.parametrize("content, match", [
    ("not json at all", "not a Chrome trace"),
    (json.dumps({"events": []}), "not a Chrome trace"),
    (json.dumps(42), "not a Chrome trace"),
    (json.dumps({"traceEvents": []}), "empty trace"),
    (json.dumps({"traceEvents": [{"ph": "M", "name": "thread_name", "tid": 0}]}), "empty trace"),
    (json.dumps({"traceEvents": [{"ph": "X", "tid": 0, "name": "a", "ts": 0}]}), "event 0 is not a real_ext span"),
])
def test_bad_traces_are_named(tmp_path, content, match):
    path = tmp_path / "trace.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        draw_timeline(path, tmp_path / "x.png")
    with pytest.raises(ValueError, match=match):
        timeline_summary(str(path))
    assert not (tmp_path / "x.png").exists()


def test_spans_of_no_duration():
    with pytest.raises(ValueError, match="cover no time"):
        timeline_summary([_span(0, "run", "a", 0, 0)])
