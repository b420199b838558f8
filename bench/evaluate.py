"""How fast `vaelab evaluate` computes the importance-weighted bounds, against the machine's matmul rate.

    .venv/bin/python bench/evaluate.py                       # template model, k = 5000, 10 000 images
    .venv/bin/python bench/evaluate.py --size 500            # a shorter run; the full time is extrapolated
    .venv/bin/python bench/evaluate.py --checkpoint RUN      # a trained model instead of random weights
    .venv/bin/python bench/evaluate.py --sweep 4 8 16 32     # several buffer budgets (MiB)

The work is dominated by the decoder's (c·b, H) x (H, P) products, so the yardstick (the
"roofline") is the fp32 rate of exactly that addmm at the same row count. On a machine shared
with other jobs the rate of both moves with the load, so the images are evaluated in slices and
the roofline is re-measured right after each slice: each slice's ratio is taken under the same
load, and the median ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

import torch

from vaelab.config import ModelSpec
from vaelab.evaluation import DEFAULT_MAX_BYTES, importance_weighted_evaluation
from vaelab.models import VAE, build_model

MNIST_TEST = 10_000


def matmul_rate(rows: int, hidden: int, pixels: int, seconds: float = 0.3) -> float:
    """GFLOP/s of addmm (rows, hidden) x (hidden, pixels) + bias into a reused fp32 buffer over ~`seconds`."""
    a, w, bias = torch.randn(rows, hidden), torch.randn(hidden, pixels), torch.randn(pixels)
    out = torch.empty(rows, pixels)
    torch.addmm(bias, a, w, out=out)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.addmm(bias, a, w, out=out)
        calls += 1
    return 2 * rows * hidden * pixels * calls / (time.perf_counter() - started) / 1e9


def decoder_flops(config: ModelSpec, images: int, k: int) -> float:
    """2 x multiply-adds of the decoder over images·k samples (the encoder adds < 0.01 % at k = 5000)."""
    return 2.0 * images * k * (config.latent_dim * config.hidden[0] + config.hidden[0] * config.input_dim)


def measure(model: VAE, x: torch.Tensor, k: int, max_bytes: int, slice_size: int) -> None:
    """Evaluate x in slices, re-measuring the roofline after each; print the totals and the ratios."""
    config = model.spec
    ks = [1, 10, 100, 1000, k] if k >= 1000 else [k]
    seconds, ratios, rates, slice_rates, layout = 0.0, [], [], [], None
    for first in range(0, x.shape[0], slice_size):
        part = x[first : first + slice_size]
        load = os.getloadavg()[0]
        started = time.perf_counter()
        result = importance_weighted_evaluation(model, part, ks, max_bytes=max_bytes)
        elapsed = time.perf_counter() - started
        rows = result.images_per_batch * result.samples_per_chunk
        layout = (result.images_per_batch, result.samples_per_chunk, rows, result.buffer_bytes)
        roofline = matmul_rate(rows, config.hidden[0], config.input_dim)
        achieved = decoder_flops(config, part.shape[0], k) / elapsed / 1e9
        seconds += elapsed
        ratios.append(achieved / roofline)
        rates.append(roofline)
        slice_rates.append(part.shape[0] / elapsed)
        print(
            f"  images {first}-{first + part.shape[0] - 1}: "
            f"{elapsed:6.2f} s, {achieved:6.1f} GFLOP/s vs addmm {roofline:6.1f} "
            f"= {100 * ratios[-1]:3.0f} %  (load average {load:.1f})",
            flush=True,
        )
    images, samples, rows, buffer_bytes = layout
    n = x.shape[0]
    achieved = decoder_flops(config, n, k) / seconds / 1e9
    print(
        f"budget {max_bytes / 2**20:g} MiB: {images} images x {samples} samples "
        f"per chunk ({rows} rows), buffers {buffer_bytes / 2**20:.1f} MiB"
    )
    print(f"  total {seconds:.1f} s for {n} images = {n / seconds:.1f} images/s, {achieved:.1f} GFLOP/s")
    print(
        f"  addmm roofline at {rows} rows: median {statistics.median(rates):.1f} "
        f"GFLOP/s (min {min(rates):.1f}, max {max(rates):.1f})"
    )
    print(
        f"  achieved / roofline per slice: median {100 * statistics.median(ratios):.0f} % "
        f"(min {100 * min(ratios):.0f} %, max {100 * max(ratios):.0f} %)"
    )
    label = "measured" if n == MNIST_TEST else "extrapolated"
    print(
        f"  full {MNIST_TEST}-image test set: {MNIST_TEST / (n / seconds):.0f} s at this run's average rate, "
        f"{MNIST_TEST / max(slice_rates):.0f} s at its fastest slice's ({label})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--size", type=int, default=MNIST_TEST, help="images to evaluate")
    parser.add_argument("--k", type=int, default=5000, help="importance samples per image")
    parser.add_argument(
        "--checkpoint", default=None, help="a trained run (default: the template model with random weights)"
    )
    parser.add_argument("--max-mib", type=float, default=DEFAULT_MAX_BYTES / 2**20, help="working-buffer budget")
    parser.add_argument("--sweep", type=float, nargs="*", default=None, help="buffer budgets (MiB) to compare")
    parser.add_argument("--slice", type=int, default=100, help="images per timed slice")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        from vaelab.checkpoint import load_model

        model, _ = load_model(args.checkpoint)
    else:
        model = build_model(ModelSpec()).eval()
    # Binary images with MNIST's ink fraction; the cost does not depend on the pixel values.
    x = torch.bernoulli(torch.full((args.size, model.spec.input_dim), 0.13), generator=torch.Generator().manual_seed(0))
    config = model.spec
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, {platform.machine()}, python {platform.python_version()}"
    )
    print(
        f"model {config.input_dim}-{config.hidden[0]}-{config.latent_dim} "
        f"({'checkpoint' if args.checkpoint else 'random weights'}), "
        f"k = {args.k}, {args.size} images, slices of {args.slice}"
    )
    importance_weighted_evaluation(model, x[:2], [args.k])  # warm-up: thread pool, allocator
    for mib in args.sweep or [args.max_mib]:
        measure(model, x, args.k, int(mib * 2**20), args.slice)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mib:.0f} MiB (the {x.nbytes / 2**20:.0f} MiB of inputs included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
