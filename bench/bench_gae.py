"""Packed GAE: real_ext.ops.gae against the way RLHF trainers usually compute
it (TRL / OpenRLHF: pad to (B, Lmax) and loop backwards over time in torch),
and against the float64 reference loop (small sizes only; it is pure Python).
Ratios are anchor time / our time.

    python bench/bench_gae.py                 # CPU
    python bench/bench_gae.py --device cuda   # GPU
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import emit, machine, markdown_table, median_time, median_times  # noqa: E402

import real_ext  # noqa: E402
from real_ext import ref  # noqa: E402


def padded_time_loop(rewards_p, values_p, mask, gamma, lam):
    """The usual padded implementation: (B, L) rewards/values (values has L+1 columns)."""
    adv = torch.zeros_like(rewards_p)
    last = torch.zeros_like(rewards_p[:, 0])
    for t in reversed(range(rewards_p.shape[1])):
        delta = rewards_p[:, t] + gamma * values_p[:, t + 1] - values_p[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, adv + values_p[:, :-1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--cases", default="64x512,512x1024,4096x256", help="BATCHxMAXLEN, comma separated")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device, gamma, lam = args.device, 1.0, 0.95
    rows = []
    for case in args.cases.split(","):
        batch, max_len = (int(x) for x in case.split("x"))
        g = torch.Generator().manual_seed(batch)
        lengths = torch.randint(1, max_len + 1, (batch,), generator=g)
        T = int(lengths.sum())
        rewards = torch.randn(T, generator=g).to(device)
        values = torch.randn(T + batch, generator=g).to(device)
        bootstrap = torch.zeros(batch, dtype=torch.bool, device=device)
        cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(torch.int32).to(device)
        # Padded layout for the anchor: values padded to L+1 with the (zero) terminal value.
        mask = (torch.arange(max_len)[None, :] < lengths[:, None]).float().to(device)
        rewards_p = torch.zeros(batch, max_len, device=device)
        values_p = torch.zeros(batch, max_len + 1, device=device)
        for i, n in enumerate(lengths.tolist()):
            s = int(cu[i])
            rewards_p[i, :n] = rewards[s:s + n]
            values_p[i, :n] = values[s + i:s + i + n]
        t_ours, t_pad = median_times([lambda: real_ext.ops.gae(rewards, values, cu, bootstrap, gamma, lam),
                                      lambda: padded_time_loop(rewards_p, values_p, mask, gamma, lam)],
                                     device, repeats=args.repeats)
        # The pure-Python reference is only timed where it finishes in seconds.
        t_ref = (median_time(lambda: ref.gae(rewards, values, cu, bootstrap, gamma, lam), device, 1, 3)
                 if T <= 200_000 else None)
        rows.append([f"{batch} seqs, len<= {max_len}", T, t_ours * 1e3, t_pad * 1e3,
                     t_ref * 1e3 if t_ref else "n/a", t_pad / t_ours, t_ref / t_ours if t_ref else "n/a"])
        print(rows[-1], flush=True)
    table = markdown_table(["case", "tokens", "ours ms", "padded torch loop ms", "ref (py, f64) ms",
                            "x vs padded loop", "x vs ref"], rows)
    text = table + f"\n\nMachine: {machine(device)}; float32, gamma={gamma}, lam={lam}.\n"
    emit(text, args.out)


if __name__ == "__main__":
    main()
