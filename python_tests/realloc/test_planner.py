"""The planner alone (no processes): on hundreds of random layout pairs every
destination element is written exactly once, bytes moved equal the lower
bound, plans are deterministic; plus load balance and node locality."""
import pytest
import torch

from real_ext.realloc import Layout, LayoutMismatchError, plan
from python_tests.model.parallel_workers import LLAMA
from python_tests.realloc.layouts import random_pair


def _bound(src: Layout, dst: Layout) -> int:
    """Bytes each destination needs and does not already hold, from boxes alone."""
    element = torch.empty((), dtype=src.dtype).element_size()
    total = 0
    for rank, shards in dst.shards.items():
        held = {s.param: s for s in src.shards.get(rank, [])}
        for s in shards:
            area = (s.rows[1] - s.rows[0]) * (s.cols[1] - s.cols[0])
            if s.param in held:
                h = held[s.param]
                rows = max(0, min(s.rows[1], h.rows[1]) - max(s.rows[0], h.rows[0]))
                cols = max(0, min(s.cols[1], h.cols[1]) - max(s.cols[0], h.cols[0]))
                area -= rows * cols
            total += area * element
    return total


@pytest.mark.parametrize("chunk", range(10))
def test_random_layout_pairs(chunk):
    for seed in range(chunk * 55, (chunk + 1) * 55):  # 550 pairs in all
        _, _, src, dst = random_pair(seed)
        p = plan(src, dst)
        p.verify()
        assert p.bytes_moved == p.bytes_lower_bound == _bound(src, dst), seed
        again = plan(*random_pair(seed)[2:])
        assert torch.equal(p.tensor, again.tensor), seed
        # Nothing is sent to a worker that already holds it: local pieces stay local.
        for t in p.transfers:
            if t.src_rank != t.dst_rank:
                held = [s for s in src.shards.get(t.dst_rank, []) if s.param == t.param]
                assert not held or held[0].rows[1] <= t.rows[0] or held[0].rows[0] >= t.rows[1] or \
                    held[0].cols[1] <= t.cols[0] or held[0].cols[0] >= t.cols[1], seed


def test_replicas_share_the_sending():
    # dp=4 replicas on workers 0-3 feed a tp=4 layout on workers 4-7: each piece
    # has four holders, so the sending should be spread evenly.
    src = Layout.from_config(LLAMA, [0, 1, 2, 3], 4, 1, 1, workers_per_node=8)
    dst = Layout.from_config(LLAMA, [4, 5, 6, 7], 1, 4, 1, workers_per_node=8)
    p = plan(src, dst, split_bytes=1024)
    assert set(p.send_bytes_per_rank) == {0, 1, 2, 3}
    assert p.send_balance <= 1.1


def test_same_node_sources_are_preferred():
    # Replicas on node 0 (workers 0-3) and node 1 (4-7); destinations on node 1.
    src = Layout.from_config(LLAMA, list(range(8)), 2, 4, 1, workers_per_node=4)
    dst = Layout.from_config(LLAMA, [4, 5], 1, 2, 1, workers_per_node=4)
    p = plan(src, dst)
    assert set(p.send_bytes_per_rank) <= {4, 5, 6, 7}


def test_layouts_of_different_models_are_refused():
    a = Layout.from_config(LLAMA, [0, 1], 1, 2, 1)
    b = Layout.from_config({**LLAMA, "intermediate_size": 128}, [0, 1], 1, 2, 1)
    with pytest.raises(LayoutMismatchError, match="different models"):
        plan(a, b)
    c = Layout.from_config(LLAMA, [0, 1], 1, 2, 1, dtype=torch.bfloat16)
    with pytest.raises(LayoutMismatchError, match="dtype"):
        plan(a, c)
    value = Layout.from_config(LLAMA, [0, 1], 1, 2, 1, head="value")
    with pytest.raises(LayoutMismatchError, match="different models"):
        plan(a, value)

