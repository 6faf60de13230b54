"""Reference packed GAE: a float64 Python loop, sequence by sequence."""
import torch


def gae(rewards, values, cu_seqlens, bootstrap, gamma, lam):
    r = rewards.detach().double().cpu().tolist()
    v = values.detach().double().cpu().tolist()
    cu = cu_seqlens.tolist()
    boot = bootstrap.tolist()
    adv = [0.0] * len(r)
    for i in range(len(cu) - 1):
        t0, t1 = cu[i], cu[i + 1]
        vals = v[t0 + i: t1 + i + 1]
        if not boot[i]:
            vals[-1] = 0.0
        a = 0.0
        for t in range(t1 - 1, t0 - 1, -1):
            delta = r[t] + gamma * vals[t - t0 + 1] - vals[t - t0]
            a = delta + gamma * lam * a
            adv[t] = a
    advantages = torch.tensor(adv, dtype=torch.float64)
    token_values = torch.tensor([v[t + i] for i in range(len(cu) - 1) for t in range(cu[i], cu[i + 1])],
                                dtype=torch.float64)
    return (advantages.to(rewards.dtype).to(rewards.device),
            (advantages + token_values).to(rewards.dtype).to(rewards.device))
