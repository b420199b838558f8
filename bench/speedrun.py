"""The speedrun: train an attempt for a wall-clock budget, certify it, and train the plain baseline for the same
budget on the same cores, in one run.

    .venv/bin/python bench/speedrun.py [--preset anytime-resnet] [--budget 300] [--threads 2] [--out speedrun]
        [--train-option=--batch-size=200 ...] [--no-baseline] [--quick]

1. `vaelab train --preset P --budget B --threads T` (its best-on-validation model, best.pt);
2. `vaelab evaluate --checkpoint best.pt --k 1 100 --no-laplace --threads T` on all 10 000 dynamically
   binarized test images: -L_100 is, in expectation, an upper bound on the test NLL, so -L_100 <= 86.76
   (Burda et al.'s VAE after 3 280 epochs) certifies a record;
3. the plain-PyTorch Burda VAE (bench/burda_baseline.py) for the same budget on the same threads, scored alike.
The jobs run one after the other, each with the machine's `--threads`. Prints one markdown row per model and
writes OUT/speedrun.json. Training seconds count optimizer steps only, on both sides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from anytime import BASELINE, run_logged, vaelab_command  # bench/, the script's own folder
from vaelab.training.metrics import read_metrics

RECORD_NLL = 86.76  # Burda et al. (2015), VAE with one stochastic layer, 3 280 epochs
K = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="anytime-resnet", help="vaelab train --preset")
    parser.add_argument("--budget", type=float, default=300, help="seconds of training, each side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("speedrun"))
    parser.add_argument(
        "--train-option",
        action="append",
        default=[],
        help="an extra `vaelab train` option, e.g. --train-option=--batch-size=200 (repeat for more)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="train and certify the attempt only")
    parser.add_argument("--quick", action="store_true", help="a smoke run on a few hundred images")
    return parser.parse_args(argv)


def evaluate(run_dir: Path, threads: int, quick: bool) -> dict:
    """-L_1 and -L_100 of run_dir/best.pt on the test set (all of it; --quick: 100 images)."""
    out = run_dir / "certified"
    command = vaelab_command("evaluate", "--checkpoint", str(run_dir / "best.pt"), "--k", "1", str(K), "--no-laplace")
    command += ["--threads", str(threads), "--out", str(out), "--no-progress"]
    command += ["--size", "100"] if quick else []
    started = time.perf_counter()
    run_logged(command, run_dir.parent / f"{run_dir.name}-evaluate.log")
    result = json.loads((out / "eval.json").read_text())
    bounds = {entry["k"]: entry for entry in result["iwae"]}
    return {
        "nll_100": -bounds[K]["mean"],
        "stderr_100": bounds[K]["stderr"],
        "nll_1": -bounds[1]["mean"],
        "images": result["images"],
        "eval_s": round(time.perf_counter() - started, 1),
    }


def attempt(args: argparse.Namespace) -> dict:
    run_dir = args.out / "attempt"
    command = vaelab_command("train", "--preset", args.preset, "--budget", f"{args.budget:g}s", "--out", str(run_dir))
    command += ["--threads", str(args.threads), "--no-progress", *args.train_option]
    if args.quick:
        command += ["--train-size", "600", "--test-size", "100", "--validation-size", "100"]
    run_logged(command, args.out / "attempt.log")
    rows = read_metrics(run_dir / "metrics.csv")
    trained = {"seconds": round(sum(row["seconds"] for row in rows), 1), "epochs": rows[-1]["epoch"]}
    return {
        "model": args.preset,
        "options": " ".join(args.train_option),
        **trained,
        **evaluate(run_dir, args.threads, args.quick),
    }


def baseline(args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).with_name("burda_baseline.py")), "--budgets", f"{args.budget:g}"]
    command += ["--threads", str(args.threads), "--out", str(args.out)]
    command += ["--train-size", "600"] if args.quick else []
    run_logged(command, args.out / "baseline.log")
    with open(args.out / "baseline.csv") as file:
        header, *lines = file.read().splitlines()
    trained = dict(zip(header.split(","), lines[-1].split(",")))
    run_dir = args.out / f"baseline-{args.budget:g}s"
    return {
        "model": BASELINE,
        "options": "",
        "seconds": round(float(trained["seconds"]), 1),
        "epochs": float(trained["epochs"]),
        **evaluate(run_dir, args.threads, args.quick),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [attempt(args)]
    if not args.no_baseline:
        rows.append(baseline(args))
    (args.out / "speedrun.json").write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1) + "\n")
    print(f"| model | options | training s | epochs | -L_{K} (all test images) | -L_1 | certify s | record |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        record = "yes" if row["nll_100"] <= RECORD_NLL else "no"
        print(
            f"| {row['model']} | {row['options'] or '-'} | {row['seconds']:.1f} | {float(row['epochs']):.2f} | "
            f"{row['nll_100']:.2f} ± {row['stderr_100']:.2f} ({row['images']}) | {row['nll_1']:.2f} | "
            f"{row['eval_s']:.0f} | {record} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
