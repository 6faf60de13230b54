"""The runtime under the Ray launcher, on a local Ray cluster this module
starts on 127.0.0.1 and stops: the PPO iteration with reallocation on 4
workers gives the local launcher's parameters; a raising worker stops the run
with its traceback, a killed one is named, a lost node ends the run; nothing
listens beyond loopback while the cluster runs; each worker's output reaches the run folder; without
Ray, `launcher: ray` says how to install it and nothing else imports Ray."""
from __future__ import annotations

import functools
import ipaddress
import os
import signal
import subprocess
import sys
import time

# Read when Ray is imported: with it off, a single-machine Ray binds loopback
# only (its default binds every interface and reports the external address).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import pytest  # noqa: E402
import ray  # noqa: E402  (the test extra installs it: pyproject.toml)
from ray.cluster_utils import Cluster  # noqa: E402  (Ray's multi-node testing cluster)
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from python_tests.runtime import experiments as ex  # noqa: E402
from real_ext.runtime import Master, WorkerFailure  # noqa: E402
from real_ext.runtime.ray_launcher import RayLauncher  # noqa: E402
from real_ext.runtime.worker import Setup  # noqa: E402


def _off_loopback() -> set[str]:
    """Local addresses of listening TCP sockets and bound UDP sockets outside loopback."""
    out = subprocess.run(["ss", "-ltunH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        local = line.split()[4]
        host = local.rsplit(":", 1)[0].strip("[]").split("%")[0]
        ip = ipaddress.ip_address(host) if host != "*" else ipaddress.ip_address("::")
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        if not ip.is_loopback:
            found.add(local)
    return found


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster on this machine, 4 CPUs on 127.0.0.1, that declares a
    silent node dead after about 1.5 s; yields it and the non-loopback
    listeners that were there before it (not ours)."""
    from ray._private import ray_constants
    assert not ray_constants.ENABLE_RAY_CLUSTER, "ray was imported before this module set its environment"
    before = _off_loopback()
    # Cluster: a head of our own (ray.init() would join any cluster running on this machine).
    head = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=4, node_ip_address="127.0.0.1", include_dashboard=False,
        _system_config={"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                        "health_check_failure_threshold": 3}))
    ray.init(address=head.address)
    try:
        yield head, before
    finally:
        ray.shutdown()
        head.shutdown()


def _load(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _run(out, launcher=None) -> tuple[dict, set]:
    """One PPO step with reallocation on 4 workers; the models saved in ``out``.
    Returns the statistics and the non-loopback listeners seen mid-run."""
    with Master(ex.ppo_models(), ex.ppo(ex.four_workers()), ex.prompts(), 4, offload=("ref", "reward"),
                launcher=launcher) as master:
        stats = master.step()
        listening = _off_loopback()
        for model in ("actor", "critic"):
            master.save(model, str(out / model))
    return stats, listening


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    local, on_ray = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("ray")
    ray_stats, listening = _run(on_ray, functools.partial(RayLauncher, log_dir=str(on_ray / "logs")))
    local_stats, local_listening = _run(local)
    return (local_stats, local), (ray_stats, on_ray), (listening | local_listening) - cluster[1]


def test_parameters_match_the_local_launcher(runs):
    (local_stats, local), (ray_stats, on_ray), _ = runs
    for model in ("actor", "critic"):
        a, b = _load(local / model), _load(on_ray / model)
        assert a.keys() == b.keys() and a
        for name in a:
            # The same workers, layouts, seeds and threads: the same float32 operations in the same order.
            assert torch.equal(a[name], b[name]), f"{model}: {name}"
    for key in ("reward/mean", "actor_train/loss", "critic_train/loss", "actor_gen/response_tokens"):
        assert ray_stats[key] == local_stats[key], key


def test_nothing_listens_beyond_loopback(runs):
    """Under either launcher (the local one's rendezvous is a file store: torch's TCP store binds every interface)."""
    *_, new_listeners = runs
    assert not new_listeners, f"listening outside loopback during the runs: {sorted(new_listeners)}"


def _fail(dataset, log_dir) -> tuple[str, float, list[int]]:
    """The failing step under Ray: its message, seconds from its start until
    everything stopped, and the workers' pids."""
    t0 = time.time()
    master = Master(ex.ppo_models(), ex.ppo(ex.four_workers()), dataset, 4,
                    launcher=functools.partial(RayLauncher, log_dir=str(log_dir)))
    pids = [pid for _, pid in master.launcher.where]
    try:
        with pytest.raises(WorkerFailure) as info:
            master.step()
    finally:
        master.close()
    return str(info.value), time.time() - t0, pids


def test_a_raising_worker_stops_the_run_with_its_traceback(cluster, tmp_path):
    message, seconds, pids = _fail(ex.RaisingDataset(ex.prompts().prompts, rank=2), tmp_path)
    assert "worker 2 failed in 'actor_gen'" in message, message
    assert "Traceback" in message and "deliberate failure from the test dataset" in message
    assert seconds < 60
    assert not any(ex.alive(p) for p in pids)
    assert "about to fail on purpose" in (tmp_path / "worker_2.log").read_text()


def test_a_killed_worker_is_named(cluster, tmp_path):
    message, seconds, pids = _fail(ex.KillingDataset(ex.prompts().prompts, rank=1), tmp_path)
    assert "worker 1 died" in message and "Ray actor" in message and "'actor_gen'" in message, message
    assert seconds < 60
    assert not any(ex.alive(p) for p in pids)


def test_cli_runs_an_experiment_on_ray(cluster, tmp_path, capsys):
    from python_tests.experiments import runs as experiments
    from real_ext.experiments.cli import main
    from real_ext.experiments.config import dump_yaml
    cfg = tmp_path / "sft.yaml"
    dump_yaml(experiments.raw("sft", str(tmp_path / "run"), actor=None, steps=1, eval={"every": 0},
                              checkpoint={"every": 0}, log={"tensorboard": False, "timeline": False}), str(cfg))
    assert main(["run", str(cfg), "--launcher", "ray", "--address", "auto"]) == 0
    printed = capsys.readouterr().out
    assert "[ray] workers 0-1 on node 127.0.0.1" in printed, printed
    run = tmp_path / "run"
    assert (run / "done.json").exists()
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["worker_0.log", "worker_1.log"]
    assert "launcher: ray" in (run / "config.yaml").read_text()


def test_a_lost_node_ends_the_run(cluster):
    """Ranks fill the head node first, then the second; when the second goes
    silent (its raylet and workers stopped: connections stay open, as with a
    network partition) the master hears of it within seconds."""
    head, _ = cluster
    node = head.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    launcher = RayLauncher(6, Setup({}, [], {}, {}))
    stopped = []
    try:
        assert launcher.workers_per_node == [4, 2]
        lost = [r for r in range(6) if launcher.node_ids[r] == node.node_id]
        assert lost == [4, 5]
        stopped = [launcher.where[r][1] for r in lost] + [p.process.pid for ps in node.all_processes.values()
                                                          for p in ps]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        t0 = time.time()
        with pytest.raises(WorkerFailure) as info:
            launcher.receive(timeout=120)
        assert time.time() - t0 < 60
        assert "worker 4 died" in str(info.value) and "node has died" in str(info.value), str(info.value)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGKILL)
        launcher.close()
        head.remove_node(node, allow_graceful=False)


WITHOUT_RAY = """
import sys
sys.modules["ray"] = None   # `import ray` now fails as if it were not installed
import real_ext, real_ext.runtime, real_ext.experiments.runner, real_ext.experiments.cli, real_ext.plan.search
from real_ext.experiments.cli import main
code = main(["check", sys.argv[1], "launcher=ray"])
print("exit", code, "imported ray:", [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "ray"])
"""


def test_without_ray_the_config_says_how_to_install_it(tmp_path):
    from python_tests.experiments import runs as experiments
    from real_ext.experiments.config import dump_yaml
    cfg = tmp_path / "sft.yaml"
    dump_yaml(experiments.raw("sft", str(tmp_path / "run"), actor=None), str(cfg))
    env = dict(os.environ, PYTHONPATH=ex.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(cfg)], capture_output=True, text=True, env=env,
                          cwd=ex.REPO, timeout=120)
    assert "exit 2 imported ray: []" in done.stdout, done.stdout + done.stderr
    assert "launcher: 'ray' needs Ray" in done.stderr and 'pip install "real_ext[ray]"' in done.stderr, done.stderr
