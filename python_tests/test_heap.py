"""real_ext.heap against what the kernel reports: page faults (getrusage) and
resident memory (/proc/self/statm). A freed block must come back without
faulting inside the scope, and the pages must go back to the kernel after it.

Each case runs in a fresh interpreter (this file as a script): in a long-lived
process glibc may serve a block from free heap memory that earlier work left,
and the faults outside a scope would then say nothing."""
import json
import os
import resource
import subprocess
import sys

BLOCK = 64 << 20                     # above glibc's largest mmap threshold (32 MiB)
# A block reused below is freed as a larger one first: the tensor's 64-byte
# alignment asks glibc for a few bytes more than a same-size freed block holds.
LARGER = BLOCK + (1 << 20)
PAGES = BLOCK // resource.getpagesize()
SMALL = 16 << 20                     # a scope's growth below the trim ceiling


def run_case(name: str, **env) -> dict:
    out = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, check=True,
                         env=dict(os.environ, **env))
    return json.loads(out.stdout.splitlines()[-1])


def test_a_freed_block_is_reused_inside_and_returned_after():
    r = run_case("reuse")
    assert r["before"] > PAGES // 2, r   # outside: glibc maps the block afresh each time
    assert r["inside"] < PAGES // 10, r
    assert r["after"] > PAGES // 2, r    # the thresholds are back down


def test_nested_scopes_hold_until_the_outermost_ends():
    r = run_case("nested")
    assert r["after_inner"] < PAGES // 10, r


def test_leaving_gives_the_pages_back():
    r = run_case("release")
    assert r["released"] > 200 << 20, f"only {r['released'] >> 20} MiB of 256 MiB went back to the kernel"


def test_a_scope_that_grew_the_heap_a_little_keeps_it():
    # Below glibc's trim ceiling (64 MiB) the memory stays for the next scope:
    # a loop of small generate() calls would otherwise fault it in every call.
    r = run_case("small")
    assert r["next_scope"] < SMALL // resource.getpagesize() // 10, r


def test_the_environment_variable_turns_it_off():
    r = run_case("reuse", REAL_EXT_HOLD_FREED_MEMORY="0")
    assert r["inside"] > PAGES // 2, r


def _cases():
    import torch

    from real_ext.heap import hold_freed_memory

    def faults_of_fresh_block(size: int = BLOCK) -> int:
        """Minor page faults taken by allocating and filling a tensor of ``size`` bytes."""
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(size // 4).fill_(1.0)   # freed again at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    def resident_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def reuse():
        faults_of_fresh_block(LARGER)
        before = faults_of_fresh_block()
        with hold_freed_memory():
            faults_of_fresh_block(LARGER)
            inside = faults_of_fresh_block()
        return dict(before=before, inside=inside, after=faults_of_fresh_block())

    def nested():
        with hold_freed_memory():
            with hold_freed_memory():
                faults_of_fresh_block(LARGER)
            return dict(after_inner=faults_of_fresh_block())

    def release():
        with hold_freed_memory():
            blocks = [torch.ones(8 << 18) for _ in range(32)]   # 32 blocks of 8 MiB, in the heap
            del blocks
            held = resident_bytes()
        return dict(released=held - resident_bytes())

    def small():
        with hold_freed_memory():
            faults_of_fresh_block(SMALL + (1 << 20))
        with hold_freed_memory():
            return dict(next_scope=faults_of_fresh_block(SMALL))

    return dict(reuse=reuse, nested=nested, release=release, small=small)


if __name__ == "__main__":
    print(json.dumps(_cases()[sys.argv[1]]()))
