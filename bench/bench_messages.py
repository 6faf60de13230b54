"""What one more gloo message costs: every pair of workers exchanges the same
volume, cut into 1, 8, 30, 60 or 120 messages per pair, all posted at once
(as the reallocation executor posts its direct messages), the cuts taking
turns. The executor sends a run of parameters that is contiguous in both
buffers as one message and stages (packs and unpacks: two more copies) only
runs shorter than kDirectMin elements (csrc/realloc/executor.cpp): a run is
worth staging together with others only where its copies cost less than the
messages they save, i.e. below "break-even KiB" here.

    python bench/bench_messages.py [--workers 4] [--mib-per-pair 95]
"""
import argparse
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_realloc import timed  # noqa: E402
from common import emit, machine, markdown_table  # noqa: E402

from python_tests.distributed import run_workers  # noqa: E402

CUTS = (1, 8, 30, 60, 120)


def worker(rank, world, elements, repeats):
    peers = [p for p in range(world) if p != rank]
    outgoing = {p: torch.ones(elements) for p in peers}
    incoming = {p: torch.zeros(elements) for p in peers}

    def exchange(cut):
        step = -(-elements // cut)
        works = [dist.irecv(incoming[p][lo:lo + step], src=p) for p in peers for lo in range(0, elements, step)]
        works += [dist.isend(outgoing[p][lo:lo + step], dst=p) for p in peers for lo in range(0, elements, step)]
        for w in works:
            w.wait()

    times = timed([lambda c=c: exchange(c) for c in CUTS], repeats)
    # What staging a run costs: a copy, every process copying at once (as
    # while the executor packs and unpacks), timed as the slowest rank.
    src, dst = torch.ones(elements), torch.zeros(elements)
    copy_s, = timed([lambda: dst.copy_(src)], repeats)
    return dict(times=times, copy_bytes_per_s=4 * elements / copy_s)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mib-per-pair", type=int, default=95, help="volume each worker sends to each other worker")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.workers < 2:
        p.error(f"--workers must be >= 2, got {args.workers}")
    if args.mib_per_pair < 1 or args.repeats < 1:
        p.error(f"--mib-per-pair and --repeats must be >= 1, got {args.mib_per_pair} and {args.repeats}")
    elements = (args.mib_per_pair << 20) // 4
    r = run_workers(worker, args.workers, elements, args.repeats, timeout=1800)[0]
    base = r["times"][0]
    messages = args.workers - 1  # per process and direction, at one message per pair
    rows = []
    for cut, t in zip(CUTS, r["times"]):
        extra = 2 * messages * (cut - 1)  # more sends and receives each process handles
        per_message = (t - base) / extra if extra else None
        # Staging a run copies it twice (pack, unpack): worth it below this size.
        break_even = per_message * r["copy_bytes_per_s"] / 2 / 1024 if per_message and per_message > 0 else None
        rows.append([cut, t * 1e3, t / base, "" if per_message is None else per_message * 1e6,
                     "" if break_even is None else break_even])
    table = markdown_table(["messages per pair", "ms", "x one message", "us per extra message (per process)",
                            "break-even KiB"], rows)
    note = (f"Machine: {machine('cpu')}; {args.workers} gloo processes on 127.0.0.1 (1 thread each), "
            f"{args.mib_per_pair} MiB from every worker to every other, median of {args.repeats} (slowest rank, "
            f"between barriers; the cuts taking turns); a copy runs at {r['copy_bytes_per_s'] / 1e9:.1f} GB/s "
            f"(read + write counted once) per process while all copy at once.")
    emit(table + "\n\n" + note + "\n", args.out)


if __name__ == "__main__":
    main()
