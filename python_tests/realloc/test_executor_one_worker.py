"""The executor on a one-worker group, in this process: gloo with CPU buffers,
and NCCL with CUDA buffers (the C++ executor's device path: staging, pack and
unpack on the GPU, the ProcessGroup handed over from Python). With one worker
every piece is local, so this checks the local-copy path, the EMA blend and
the staging cap against the layout's own slices; the multi-worker paths run
under gloo in test_executor.py (one GPU cannot hold two NCCL ranks)."""
import pytest
import torch
import torch.distributed as dist

from python_tests.conftest import HAS_CUDA
from python_tests.realloc.executor_workers import full_state, matches
from python_tests.model.parallel_workers import LLAMA, QWEN2_TIED
from real_ext.realloc import Layout, execute, plan

BACKENDS = [
    pytest.param(("gloo", "cpu"), id="gloo-cpu"),
    pytest.param(("nccl", "cuda"), id="nccl-cuda",
                 marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
]


@pytest.fixture(params=BACKENDS)
def device(request, tmp_path):
    """The buffers' device, with a one-worker default process group of its backend for the test."""
    backend, device = request.param
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield device
    dist.destroy_process_group()


@pytest.mark.parametrize("config,head", [(LLAMA, "lm"), (LLAMA, "value"), (QWEN2_TIED, "lm")])
def test_local_copy_and_staging_cap(device, config, head):
    state = full_state(config, head, seed=3)
    layout = Layout.from_config(config, [0], 1, 1, 1, head=head)
    src = layout.shard_of(state, 0).to(device)
    for cap in (1 << 30, 4096):  # one piece at a time under the small cap
        dst = torch.full_like(src, float("nan"))
        staged = execute(plan(layout, layout), src, dst, max_buffer_bytes=cap)
        assert staged <= cap
        assert matches(layout, dst.cpu(), state, 0)


def test_ema(device):
    new, old = full_state(LLAMA, "lm", seed=1), full_state(LLAMA, "lm", seed=2)
    layout = Layout.from_config(LLAMA, [0], 1, 1, 1)
    dst = layout.shard_of(old, 0).to(device)
    execute(plan(layout, layout), layout.shard_of(new, 0).to(device), dst, eta=0.3)
    blended = layout.shard_of({k: 0.3 * new[k].double() + 0.7 * old[k].double() for k in new}, 0)
    assert (dst.cpu().double() - blended).abs().max() <= 1e-6  # one float32 rounding of the blend
