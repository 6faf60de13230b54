"""Resumable checkpoints of a run: ``<out>/checkpoints/step_<N>/`` (N = steps
done) holding

    models/<model>/           each trained model in Hugging Face format
    train_state/<model>/      every rank's optimizer state and RNG (rank<r>.pt)
    master.json               steps done, the algorithm's state (e.g. the KL coefficient)
    config.yaml               the resolved config the run had
    manifest.json             every file above with its size and CRC-32, written last

A checkpoint is written under a temporary name and renamed when complete, so a
crash mid-save leaves the earlier ones intact; a folder without a manifest is
never resumed from. The data position is the step: the data order is a
function of the seed and the step (real_ext/algo/common.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zlib

from real_ext.experiments.config import dump_yaml

PATTERN = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from."""


def path_of(root: str, step: int) -> str:
    return os.path.join(root, f"step_{step:08d}")


def _crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def save(master, root: str, step: int, trained: list[str], config: dict, keep: int) -> str:
    """Write checkpoint ``step`` of the run ``master`` drives; returns its folder."""
    final = path_of(root, step)
    tmp = os.path.join(root, f".step_{step:08d}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    master.save_states(trained, tmp)
    algorithm = getattr(master.algorithm, "state_dict", dict)()
    with open(os.path.join(tmp, "master.json"), "w") as f:
        json.dump({"step": step, "algorithm": algorithm}, f)
    dump_yaml(config, os.path.join(tmp, "config.yaml"))
    manifest = {name: [os.path.getsize(os.path.join(tmp, name)), _crc(os.path.join(tmp, name))]
                for name in _files(tmp)}
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f)
    if os.path.exists(final):   # a rerun of this step: swap, never leave a moment without one
        old = final + ".old"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    for stale in complete(root)[:-keep]:
        shutil.rmtree(path_of(root, stale))
    return final


def complete(root: str) -> list[int]:
    """Steps of the checkpoints under ``root`` that finished writing, ascending."""
    if not os.path.isdir(root):
        return []
    steps = []
    for name in os.listdir(root):
        m = PATTERN.match(name)
        if m and os.path.isfile(os.path.join(root, name, MANIFEST)):
            steps.append(int(m.group(1)))
    return sorted(steps)


def verify(folder: str) -> dict:
    """The checkpoint's master.json after checking every file against the
    manifest; CheckpointError naming the damaged file otherwise."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder}: unreadable manifest ({e}); remove the folder to resume "
                              f"from an earlier checkpoint") from None
    for name, (size, crc) in manifest.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            problem = "is missing"
        elif os.path.getsize(path) != size:
            problem = f"has {os.path.getsize(path)} bytes, {size} were written"
        elif _crc(path) != crc:
            problem = "does not match its checksum"
        else:
            continue
        raise CheckpointError(f"checkpoint {folder} is damaged: {name} {problem}; remove the folder to resume "
                              f"from an earlier checkpoint")
    with open(os.path.join(folder, "master.json")) as f:
        return json.load(f)


def link_models(folder: str, dest: str) -> None:
    """The checkpoint's HF models at ``dest/<model>`` (hard links where the
    filesystem allows: no second copy of the weights)."""
    src = os.path.join(folder, "models")
    tmp = dest.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, tmp, copy_function=link)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.rename(tmp, dest)
