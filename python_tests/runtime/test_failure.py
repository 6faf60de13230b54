"""A worker that raises or is killed: the master names the worker, the MFC and
the traceback, and every process is gone within 60 s. Ctrl-C stops a run."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from python_tests.runtime import experiments as ex
from real_ext.runtime import Master, WorkerFailure


def _fail_and_stop(dataset, match: str) -> tuple[str, float, list]:
    master = Master(ex.ppo_models(), ex.ppo(ex.four_workers()), dataset, 4)
    procs = master.launcher.procs
    try:
        with pytest.raises(WorkerFailure) as info:
            master.step()
    finally:
        t0 = time.time()
        master.close()
    assert match in str(info.value), str(info.value)
    return str(info.value), time.time() - t0, procs


def test_a_raising_worker_is_named_with_its_mfc_and_traceback():
    message, stop_s, procs = _fail_and_stop(ex.RaisingDataset(ex.prompts().prompts, rank=2), "worker 2")
    assert "'actor_gen'" in message
    assert "deliberate failure from the test dataset" in message and "Traceback" in message
    assert stop_s < 60 and not any(p.is_alive() for p in procs)


def test_a_killed_worker_is_named_and_everything_stops():
    message, stop_s, procs = _fail_and_stop(ex.KillingDataset(ex.prompts().prompts, rank=1), "worker 1 died")
    assert "'actor_gen'" in message
    assert stop_s < 60 and not any(p.is_alive() for p in procs)


INTERRUPTED_RUN = """
import faulthandler
import signal
from python_tests.runtime import experiments as ex
from real_ext.runtime import Master
if __name__ == "__main__":
    # Ctrl-C as in a terminal's foreground job: a run started in the background (a CI script
    # under `&`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's stack dump if the run hangs
    with Master(ex.ppo_models(), ex.ppo(ex.four_workers()), ex.prompts(), 4) as master:
        print(*(p.pid for p in master.launcher.procs), flush=True)
        while True:
            master.step()
"""


def test_ctrl_c_stops_master_and_workers(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(INTERRUPTED_RUN)
    env = dict(os.environ, PYTHONPATH=ex.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # A session of its own, so that the SIGINT goes to its whole process group as a terminal's Ctrl-C does.
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ex.REPO, start_new_session=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 4, proc.stderr.read()
        time.sleep(2.0)  # into the steps
        t0 = time.time()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Say where the master is stuck.
            alive = [p for p in pids if ex.alive(p)]
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(1.0)
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the master did not exit within 60 s of Ctrl-C; workers alive: {alive}; "
                        f"its stderr (stacks at the end):\n{proc.communicate()[1]}")
        deadline = t0 + 60
        while any(ex.alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(ex.alive(p) for p in pids), "workers outlived the interrupted master"
        assert "KeyboardInterrupt" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_worker_failing_at_start_is_reported(tmp_path):
    """A checkpoint folder whose config is fine but whose weights are missing
    passes the master's checks and fails in the workers that load it."""
    (tmp_path / "config.json").write_text(json.dumps(ex.TASK.model_config("tiny")))
    models = ex.ppo_models()
    models["ref"].config, models["ref"].path = None, str(tmp_path)
    t0 = time.time()
    with pytest.raises(WorkerFailure, match=r"worker [23] failed while starting:(.|\n)*safetensors"):
        Master(models, ex.ppo(ex.four_workers()), ex.prompts(), 4)
    assert time.time() - t0 < 60
    assert not multiprocessing.active_children()
