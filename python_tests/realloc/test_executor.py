"""The executor with gloo processes on 127.0.0.1: destination buffers equal the
slices of the full parameters exactly, round trips do not drift, EMA blends,
the staging cap holds, and bad calls fail before any communication."""
import pytest

from python_tests.distributed import run_workers
from python_tests.realloc import executor_workers as w


def test_many_layout_pairs_exactly():
    results = run_workers(w.pairs_worker, 8)
    assert len(results[0]) >= 30
    for rank, per_rank in enumerate(results):
        for name, head, s, d, exact, within_cap in per_rank:
            assert exact, (rank, name, head, s, d)
            assert within_cap, (rank, name, head, s, d)


def test_round_trips_do_not_drift():
    assert all(run_workers(w.round_trip_worker, 8))


def test_ema_update():
    # float32: one rounding of the blend
    assert max(run_workers(w.ema_worker, 6)) < 1e-6


def test_bad_calls_fail_before_communicating():
    for messages in run_workers(w.bad_input_worker, 2):
        assert "the layouts name rank 3 but the process group has 2 ranks" in messages[0]
        assert "must be 1-D with" in messages[1]
        assert "dtype torch.float64" in messages[2]
        assert "got dst_buffer=None" in messages[3]
