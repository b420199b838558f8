"""What `UpsamplingConv2d` buys: a convolutional decoder with its doubling upsamplings fused into the
convolutions after them, against the same decoder run as nn.Upsample then nn.Conv2d.

    .venv/bin/python bench/upsampling.py [--preset resnet-vamp] [--rows 100] [--threads 1] [--seconds 2]

Both forms hold the same weights and compute the same function (tests/test_nn.py holds them equal
in float64). Printed per form: seconds per 10^6 decoder rows without gradients (what IWAE-k
evaluation spends per sample), and milliseconds of a forward and backward pass of `rows` rows (a
training step's decoder share); the two forms alternate, so the ratio is measured under one load.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from vaelab.models import build_model
from vaelab.nn import UpsamplingConv2d, unfused
from vaelab.presets import preset_config


def timed(function, seconds: float) -> float:
    """Mean seconds of one call of `function` over about `seconds`, after two warm-up calls."""
    function()
    function()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        function()
        calls += 1
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="resnet-vamp", help="a preset with a convolutional decoder")
    parser.add_argument("--rows", type=int, default=100, help="decoder rows per call (IWAE's chunks are ~100)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements per form")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = preset_config(args.preset).model
    fused = build_model(spec).likelihood.decoder
    if not any(isinstance(m, UpsamplingConv2d) for m in fused.modules()):
        raise SystemExit(f"{args.preset}'s decoder has no doubling upsampling to fuse; choose a convolutional preset")
    plain = unfused(copy.deepcopy(fused))
    h = torch.randn(args.rows, fused.stem.in_features)
    with torch.no_grad():
        difference = (fused(h) - plain(h)).abs().max().item()

    def forward(decoder: nn.Module):
        def run() -> None:
            with torch.no_grad():
                decoder(h)

        return run

    def forward_backward(decoder: nn.Module):
        def run() -> None:
            decoder(h).square().mean().backward()

        return run

    print(
        f"{args.preset}'s decoder, {args.rows} rows per call, {args.threads} thread(s); "
        f"max |fused - plain| {difference:.2e}"
    )
    for label, make, scale, unit in (
        ("no gradients", forward, 1e6 / args.rows, "s per 10^6 rows"),
        ("forward + backward", forward_backward, 1e3, "ms per call"),
    ):
        times: dict[str, list[float]] = {"fused": [], "plain": []}
        for _ in range(args.repeats):
            for name, decoder in (("fused", fused), ("plain", plain)):
                times[name].append(timed(make(decoder), args.seconds) * scale)
        fused_t, plain_t = statistics.median(times["fused"]), statistics.median(times["plain"])
        print(
            f"{label:>20}: fused {fused_t:8.2f}  plain {plain_t:8.2f}  {unit}   "
            f"plain / fused = {plain_t / fused_t:.2f}x"
        )


if __name__ == "__main__":
    main()
