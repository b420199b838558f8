"""Training speed beside a busy neighbour: seconds per training step alone and with one CPU-bound process
running, for each thread count and OpenMP wait policy.

    .venv/bin/python bench/neighbour.py [--preset anytime-resnet] [--steps 300] [--threads 1 2]
        [--policies default passive] [--repeats 2] [--out /tmp/neighbour]

Each cell trains `--steps` steps in a fresh process (`vaelab train --preset P --train-size ...` for one epoch,
whose seconds metrics.csv records: optimizer steps only, no data loading or validation), so OMP_NUM_THREADS and
OMP_WAIT_POLICY are set before torch starts. The neighbour is one Python process spinning on one core, started
before and stopped after each busy cell. Prints seconds per step (the minimum over repeats) and the slowdown
busy / alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vaelab.training.metrics import read_metrics

SPIN = "while True: pass"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="resnet-vamp", help="a preset without a budget (epochs are set here)")
    parser.add_argument("--steps", type=int, default=300, help="training steps timed per cell")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2, 0], help="0 = vaelab's choice (fewer beside busy cores)"
    )
    parser.add_argument("--policies", nargs="+", default=["default", "passive"], choices=["default", "passive"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="synthetic-free smoke run: few steps, one repeat")
    return parser.parse_args(argv)


def seconds_per_step(args: argparse.Namespace, threads: int, policy: str, busy: bool) -> float:
    """Train args.steps steps in a fresh process; -> seconds per step of its epoch (metrics.csv)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if not threads:
        env.pop("OMP_NUM_THREADS", None)
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    neighbour = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        time.sleep(0.2 if busy else 0)  # the neighbour is running before training starts
        with tempfile.TemporaryDirectory(prefix="vaelab-neighbour-") as tmp:
            run = Path(tmp) / "run"
            command = [sys.executable, "-m", "vaelab", "train", "--preset", args.preset, "--epochs", "1"]
            command += ["--train-size", str(args.steps * args.batch_size), "--batch-size", str(args.batch_size)]
            command += ["--validation-size", "100", "--test-size", "100", "--threads", str(threads)]
            if not threads:  # vaelab's own choice
                command = command[: command.index("--threads")] + command[command.index("--threads") + 2 :]
            command += ["--no-progress", "--out", str(run)]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-1000:]}")
            rows = read_metrics(run / "metrics.csv")
            return rows[0]["seconds"] / rows[0]["steps"]
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 5, 1
    print(f"{args.preset}, {args.steps} steps of batch {args.batch_size}, min over {args.repeats} repeats")
    print("| threads | OMP_WAIT_POLICY | ms/step alone | ms/step beside one busy process | slowdown |")
    print("|---:|---|---:|---:|---:|")
    for threads in args.threads:
        for policy in args.policies:
            alone = min(seconds_per_step(args, threads, policy, False) for _ in range(args.repeats))
            busy = min(seconds_per_step(args, threads, policy, True) for _ in range(args.repeats))
            print(
                f"| {threads or 'auto'} | {policy} | {1000 * alone:.1f} | {1000 * busy:.1f} | {busy / alone:.2f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
