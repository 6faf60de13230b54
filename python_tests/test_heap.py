"""real_ext.heap against what the kernel reports: page faults (getrusage) and
resident memory (/proc/self/statm). A freed block must come back without
faulting inside the scope, and the pages must go back to the kernel after it."""
import os
import resource
import subprocess
import sys

import torch

from real_ext.heap import hold_freed_memory

BLOCK = 64 << 20                     # above glibc's largest mmap threshold (32 MiB)
PAGES = BLOCK // resource.getpagesize()


def faults_of_fresh_block(size: int = BLOCK) -> int:
    """Minor page faults taken by allocating and filling a tensor of ``size`` bytes."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(size // 4).fill_(1.0)   # freed again at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


# A block reused in the tests below is freed as a larger one first: the tensor's
# 64-byte alignment asks glibc for a few bytes more than a same-size freed block holds.
LARGER = BLOCK + (1 << 20)


def test_a_freed_block_is_reused_inside_and_returned_after():
    faults_of_fresh_block(LARGER)
    assert faults_of_fresh_block() > PAGES // 2   # outside: glibc maps it afresh each time
    with hold_freed_memory():
        faults_of_fresh_block(LARGER)
        held = faults_of_fresh_block()
    assert held < PAGES // 10, f"{held} faults for a reused {BLOCK >> 20} MiB block"
    assert faults_of_fresh_block() > PAGES // 2   # the thresholds are back down


def test_nested_scopes_hold_until_the_outermost_ends():
    with hold_freed_memory():
        with hold_freed_memory():
            faults_of_fresh_block(LARGER)
        assert faults_of_fresh_block() < PAGES // 10


def test_leaving_gives_the_pages_back():
    with hold_freed_memory():
        blocks = [torch.ones(8 << 18) for _ in range(32)]   # 32 blocks of 8 MiB, in the heap
        del blocks
        held = resident_bytes()
    released = held - resident_bytes()
    assert released > 200 << 20, f"only {released >> 20} MiB of 256 MiB went back to the kernel"


def test_the_environment_variable_turns_it_off():
    code = ("import resource, torch\n"
            "from real_ext.heap import hold_freed_memory\n"
            "def fresh(n):\n"
            "    b = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    torch.empty(n // 4).fill_(1.0)\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - b\n"
            "with hold_freed_memory():\n"
            f"    fresh({LARGER})\n"
            f"    print(fresh({BLOCK}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, REAL_EXT_HOLD_FREED_MEMORY="0"))
    assert int(out.stdout.split()[-1]) > PAGES // 2
