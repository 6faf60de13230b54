"""Sample data on workers and its movement between them.

Each worker keeps a store: sample id -> {key: tensor} (per-token tensors of the
sample's length, or per-sample scalars). The master only tracks which worker
holds which (sample, key). A transfer moves samples worker to worker over
torch.distributed point-to-point; its pairs are processed in one sorted order
on every worker, so blocking sends and receives always find their partner.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

Store = dict[int, dict[str, torch.Tensor]]


def plan_transfers(needs: dict[int, list[int]], keys: list[str],
                   holders: dict[tuple[int, str], set[int]]) -> list[tuple[int, int, list[int], list[str]]]:
    """(src, dst, sample ids, keys) pairs so that every worker in `needs` gets
    every key of its samples. Holders already holding a piece are skipped; among
    several holders the sending is spread (fewest samples assigned so far)."""
    load: dict[int, int] = {}
    pairs: dict[tuple[int, int], dict[int, list[str]]] = {}
    for dst in sorted(needs):
        for sid in needs[dst]:
            for key in keys:
                owners = holders.get((sid, key), set())
                if not owners:
                    raise KeyError(f"no worker holds key {key!r} of sample {sid}")
                if dst in owners:
                    continue
                src = min(sorted(owners), key=lambda w: (load.get(w, 0), w))
                load[src] = load.get(src, 0) + 1
                pairs.setdefault((src, dst), {}).setdefault(sid, []).append(key)
    out = []
    for (src, dst), samples in sorted(pairs.items()):
        sids = sorted(samples)
        out.append((src, dst, sids, sorted({k for s in sids for k in samples[s]})))
    return out


def run_transfers(rank: int, pairs, store: Store) -> int:
    """Carry out this worker's part of a transfer; returns the bytes it received."""
    received = 0
    for src, dst, sids, keys in pairs:
        if src == rank:
            payload = {sid: {k: store[sid][k] for k in keys if k in store[sid]} for sid in sids}
            dist.send_object_list([payload], dst=dst)
        elif dst == rank:
            box = [None]
            dist.recv_object_list(box, src=src)
            for sid, data in box[0].items():
                store.setdefault(sid, {}).update(data)
                received += sum(t.numel() * t.element_size() for t in data.values())
    return received
