"""Shared benchmark plumbing: timing (median of repeats after warm-up, device
synchronised), the machine's measured ceilings, and markdown output."""
import platform
import statistics
import time

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn, device: str, warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds of fn() over `repeats` runs after `warmup` runs."""
    return median_times([fn], device, warmup, repeats)[0]


def median_times(fns, device: str, warmup: int = 2, repeats: int = 5) -> list[float]:
    """Median seconds of each function, the functions taking turns run by run,
    so that drift in the machine's load reaches them alike (compare these)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync(device)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            if device.startswith("cuda"):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                ts.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def _square_operands(device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    n = 8192 if device.startswith("cuda") else 2048
    g = torch.Generator(device="cpu").manual_seed(0)
    return tuple(torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))


def _product_rate(fn, n: int, device: str) -> float:
    return 2 * n ** 3 / median_time(fn, device, warmup=2, repeats=5)


def matmul_ceiling(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of a large torch.mm in this run: the compute ceiling to compare with."""
    a, b = _square_operands(device, dtype)
    return _product_rate(lambda: torch.mm(a, b), a.shape[0], device)


def product_ceiling(device: str, dtype: torch.dtype) -> tuple[float, str]:
    """The faster of torch.mm and real_ext's no-autograd linear (OpenBLAS where
    real_ext/ops/cpu_blas.py loads it) on the same large product: (FLOP/s,
    which), the ceiling for work that runs through real_ext's products."""
    a, b = _square_operands(device, dtype)
    rates = {"torch.mm": _product_rate(lambda: torch.mm(a, b), a.shape[0], device)}
    if not device.startswith("cuda"):
        from real_ext import ops
        rates[f"real_ext linear, {ops.cpu_blas.current()}"] = _product_rate(lambda: ops.linear(a, b), a.shape[0],
                                                                            device)
    best = max(rates, key=rates.get)
    return rates[best], best


def copy_bandwidth(device: str) -> float:
    """Bytes/s (read + write) of a large device-to-device copy in this run."""
    n = (1 << 30) if device.startswith("cuda") else (1 << 27)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), device, warmup=2, repeats=10)
    return 2 * n / t


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(text: str, out_path: str | None) -> None:
    """Print the result block and, when asked, write it to a markdown file."""
    print("\n" + text)
    if out_path:
        with open(out_path, "w") as f:
            f.write(text)
