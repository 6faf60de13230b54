"""Sample data on workers and its movement between them.

Each worker keeps a store: sample id -> SequenceSample holding that sample's
keys (real_ext/data/sample.py). The master only tracks which worker holds
which (sample, key). A transfer moves samples worker to worker over
torch.distributed point-to-point: a small header (ids, nested lengths, dtypes)
then one packed tensor per key. Its pairs are processed in one sorted order on
every worker, so blocking sends and receives always find their partner.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from real_ext.data.sample import SequenceSample

Store = dict[int, SequenceSample]


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
    # One message per (src, dst, key set): a sample whose other keys the destination holds already sends less.
    out = []
    for (src, dst), samples in sorted(pairs.items()):
        groups: dict[tuple[str, ...], list[int]] = {}
        for sid in sorted(samples):
            groups.setdefault(tuple(sorted(samples[sid])), []).append(sid)
        out += [(src, dst, sids, list(keys)) for keys, sids in sorted(groups.items())]
    return out


def store_add(store: Store, sample: SequenceSample) -> None:
    """Keep every sample of ``sample`` (adding keys to samples already held)."""
    for part in sample.unpack():
        sid = part.ids[0]
        if sid in store:
            store[sid].update_(part)
        else:
            store[sid] = part


def run_transfers(rank: int, pairs, store: Store, device: torch.device) -> int:
    """Carry out this worker's part of a transfer; returns the bytes it received."""
    received = 0
    for src, dst, sids, keys in pairs:
        if src == rank:
            sample = SequenceSample.gather([store[s] for s in sids], keys)
            header = (sample.ids, sample.seqlens, {k: (t.dtype, tuple(t.shape)) for k, t in sample.data.items()})
            dist.send_object_list([header], dst=dst)
            for key in sorted(sample.data):
                dist.send(sample.data[key].contiguous(), dst=dst)
        elif dst == rank:
            box = [None]
            dist.recv_object_list(box, src=src)
            ids, seqlens, specs = box[0]
            data = {}
            for key in sorted(specs):
                dtype, shape = specs[key]
                data[key] = torch.empty(shape, dtype=dtype, device=device)
                dist.recv(data[key], src=src)
                received += data[key].numel() * data[key].element_size()
            store_add(store, SequenceSample(ids, seqlens, data))
    return received
