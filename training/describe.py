"""Print, for every registered model: parameters, input size and measured CPU latency.

    python -m training.describe [--threads N] [--repeats R]

Latency is the median of R timed forward passes (after one warm-up) in eval mode under
``torch.inference_mode()``, for one image and for a batch of 8, with random-initialised weights
(latency does not depend on the weight values).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from core.registry import REGISTRY
from served_model.network import count_parameters, create_model


def measure_ms(model: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(batch)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(batch)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(REGISTRY))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    header = (
        f"{'model':<18} {'backbone':<24} {'sequence':<12} {'params':>10} {'input':>7} "
        f"{'1 img ms':>9} {'8 img ms':>9} {'img/s@8':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in args.models:
        spec = REGISTRY[name]
        model = create_model(name).eval()
        size = spec.input_size
        one = measure_ms(model, torch.randn(1, 3, size, size), args.repeats)
        eight = measure_ms(model, torch.randn(8, 3, size, size), args.repeats)
        print(
            f"{name:<18} {spec.backbone:<24} {spec.sequence.kind:<12} {count_parameters(model):>10,} "
            f"{size:>7} {one:>9.1f} {eight:>9.1f} {8000 / eight:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
