"""What `real-ext plan` prints and writes: the plan as a table, the estimated
iteration time of it and of each baseline, and the allocations as YAML that
`real-ext run` accepts."""
from __future__ import annotations

import yaml

from real_ext.experiments.config import to_dict


def _mesh(mesh) -> str:
    return f"{mesh[0]}-{mesh[-1]}" if len(mesh) > 1 else str(mesh[0])


def plan_table(search_result) -> str:
    r = search_result.result
    spans = {}
    for _, kind, name, start, end in r.spans:
        if kind == "run":
            spans.setdefault(name, []).append(end - start)
    lines = ["| MFC | workers | dp | tp | pp | micro-batches | est. time per call (s) |", "|---|---|---|---|---|---|---|"]
    for name, a in search_result.allocations.items():
        times = spans.get(name, [0.0])
        lines.append(f"| {name} | {_mesh(a.mesh)} | {a.dp} | {a.tp} | {a.pp} | {a.n_microbatches} | "
                     f"{sum(times) / len(times):.3g} |")
    lines += ["", "| plan | est. iteration time (s) | vs searched |", "|---|---|---|",
              f"| searched | {r.iteration_time:.4g} | 1.00x |"]
    for name, found in search_result.baselines.items():
        if found is None:
            lines.append(f"| {name} | does not fit | - |")
        else:
            t = found[1].iteration_time
            lines.append(f"| {name} | {t:.4g} | {t / r.iteration_time:.2f}x |")
    lines.append("")
    lines.append(f"{search_result.evaluated} plans simulated in {search_result.seconds:.1f} s")
    return "\n".join(lines)


def allocations_yaml(allocations) -> str:
    return yaml.safe_dump({"allocations": {name: {k: v for k, v in to_dict(a).items()}
                                           for name, a in allocations.items()}},
                          sort_keys=False, default_flow_style=None)
