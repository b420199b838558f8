"""The anytime table: the test NLL reached after each training budget, vaelab's budget presets beside a
plain-PyTorch Burda VAE (bench/burda_baseline.py), both measured in one run.

    .venv/bin/python bench/anytime.py [--budgets 60 300 1800] [--presets anytime-two-layer] [--threads 1]
        [--k 5000] [--images 0] [--out anytime] [--quick] [--resume]
    .venv/bin/python bench/anytime.py --table OUT      # the table again, from a finished run's anytime.csv

Two slots run at once, `--threads` each (one core each on a 2-core machine, so that neither side has the
machine to itself): slot A trains `vaelab train --preset P --budget B` for every preset and budget in
turn (each budget its own run: the schedules are laid over it); slot B trains the baseline once up to
the largest budget and keeps its best-on-validation model at every budget (its learning rate is
constant, so one run serves them all). Then each model's best.pt is scored by `vaelab evaluate --k K
--no-laplace` on the protocol's test set (all 10 000 images, binarized by one seeded draw; `--images N`
takes the first N), two evaluations at a time. Training seconds count optimizer steps only, on both
sides. Writes OUT/anytime.csv and prints the markdown table the README shows.

A run longer than a sitting survives a kill: rerun the same command with --resume. Each job that finished
left LOG.done and is skipped; a vaelab training continues from its last epoch's checkpoint.pt (`vaelab train
--resume`), the baseline from its OUT/baseline-state.pt, an evaluation from its finished shards. Seconds
trained after the last checkpoint are lost, not counted, on both sides.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from burda_baseline import STATE_FILE  # bench/, the script's own folder
from vaelab.training.metrics import read_metrics

COLUMNS = ("model", "budget_s", "seconds", "epochs", "steps", "nll", "stderr", "k", "images", "eval_s")
BASELINE = "plain PyTorch (Burda VAE)"


def vaelab_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "vaelab", *arguments]


def done_marker(log: Path) -> Path:
    """The file that says the job logging to `log` finished: written after it exits 0, so --resume skips it."""
    return log.with_name(log.name + ".done")


def run_logged(argv: list[str], log: Path) -> None:
    """Run one command with its output appended to `log` and mark it done; a failure stops the bench naming
    the log."""
    with open(log, "a") as file:
        code = subprocess.run(argv, stdout=file, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({code}); see {log}; rerun with --resume to continue")
    done_marker(log).touch()


def resumed(options: argparse.Namespace, argv: list[str], log: Path, kind: str, where: Path) -> list[str] | None:
    """The command that continues one job of an interrupted bench: None if it finished, its --resume form if
    it left a checkpoint, else the fresh command (with --overwrite for a vaelab run that left files but no
    checkpoint)."""
    if done_marker(log).exists():
        return None
    if kind == "train":
        if (where / "checkpoint.pt").exists():
            return vaelab_command("train", "--out", str(where), "--resume", *common_train_options(options))
        return [*argv, "--overwrite"] if where.exists() else argv
    if kind == "baseline" and (where / STATE_FILE).exists():
        return [*argv, "--resume"]
    return argv  # a baseline from the start, or an evaluation (which resumes from its own finished shards)


def common_train_options(options: argparse.Namespace) -> list[str]:
    """The `vaelab train` options every budget run of the bench takes (and its --resume repeats)."""
    common = ["--threads", str(options.threads), "--no-progress"]
    if options.quick:
        common += ["--train-size", "600", "--test-size", "100", "--validation-size", "100"]
    return common


def train_jobs(options: argparse.Namespace, out: Path) -> tuple[list[tuple[list[str], Path]], list[str], Path]:
    """(slot A's vaelab trainings, slot B's baseline command, its log)."""
    common = common_train_options(options)
    jobs = [
        (
            vaelab_command(
                "train",
                "--preset",
                preset,
                "--budget",
                f"{budget:g}s",
                "--out",
                str(out / f"{preset}-{budget:g}s"),
                *common,
            ),
            out / f"{preset}-{budget:g}s.log",
        )
        for preset in options.presets
        for budget in sorted(options.budgets)
    ]
    baseline = [
        sys.executable,
        str(Path(__file__).with_name("burda_baseline.py")),
        "--budgets",
        *(f"{b:g}" for b in options.budgets),
        "--threads",
        str(options.threads),
        "--out",
        str(out),
        *(["--train-size", "600"] if options.quick else []),
    ]
    return jobs, baseline, out / "baseline.log"


def models(options: argparse.Namespace, out: Path) -> list[tuple[str, float, Path]]:
    """(model name, budget, run directory) of every model the run trains."""
    found = [(preset, b, out / f"{preset}-{b:g}s") for preset in options.presets for b in sorted(options.budgets)]
    return found + [(BASELINE, b, out / f"baseline-{b:g}s") for b in sorted(options.budgets)]


def evaluate_command(options: argparse.Namespace, run_dir: Path) -> list[str]:
    return vaelab_command(
        "evaluate",
        "--checkpoint",
        str(run_dir / "best.pt"),
        "--k",
        str(options.k),
        "--no-laplace",
        "--threads",
        str(options.threads),
        "--size",
        str(options.images),
        "--out",
        str(run_dir / f"eval-k{options.k}"),
        "--no-progress",
    )


def row_for(name: str, budget: float, run_dir: Path, k: int) -> dict:
    """The table's row of one model from its run directory (metrics.csv or baseline.csv, and eval.json)."""
    result = json.loads((run_dir / f"eval-k{k}" / "eval.json").read_text())
    bound = next(entry for entry in result["iwae"] if entry["k"] == k)
    if name == BASELINE:
        with open(run_dir.parent / "baseline.csv", newline="") as file:
            trained = next(r for r in csv.DictReader(file) if float(r["budget_s"]) == budget)
        seconds, epochs, steps = float(trained["seconds"]), float(trained["epochs"]), ""
    else:
        epochs_run = read_metrics(run_dir / "metrics.csv")
        seconds = sum(row["seconds"] for row in epochs_run)
        epochs, steps = epochs_run[-1]["epoch"], int(epochs_run[-1]["steps"])
    return {
        "model": name,
        "budget_s": budget,
        "seconds": round(seconds, 1),
        "epochs": epochs,
        "steps": steps,
        "nll": -bound["mean"],
        "stderr": bound["stderr"],
        "k": k,
        "images": result["images"],
        "eval_s": round(bound["seconds"], 1),
    }


def table(rows: list[dict]) -> str:
    """Markdown: one row per model, one column per budget, NLL ± stderr."""
    budgets = sorted({row["budget_s"] for row in rows})
    names = list(dict.fromkeys(row["model"] for row in rows))
    cells = {(row["model"], row["budget_s"]): row for row in rows}
    lines = [
        "| model | " + " | ".join(_budget_text(b) for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for name in names:
        entries = []
        for budget in budgets:
            row = cells.get((name, budget))
            entries.append("–" if row is None else f"{row['nll']:.2f} ± {row['stderr']:.2f}")
        lines.append(f"| {name} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def _budget_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def collect(options: argparse.Namespace, out: Path) -> list[dict]:
    rows = [row_for(name, b, run_dir, options.k) for name, b, run_dir in models(options, out)]
    with open(out / "anytime.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def read_rows(out: Path) -> list[dict]:
    """The rows a finished run wrote to OUT/anytime.csv, numbers as numbers."""
    path = out / "anytime.csv"
    if not path.is_file():
        raise SystemExit(
            f"{path} does not exist: --table reads a finished run's OUT; run bench/anytime.py --out {out} first"
        )
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        row.update(budget_s=float(row["budget_s"]), nll=float(row["nll"]), stderr=float(row["stderr"]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0, 300.0, 1800.0], help="seconds")
    parser.add_argument("--presets", nargs="+", default=["anytime-two-layer"])
    parser.add_argument("--threads", type=int, default=1, help="threads per slot (two slots run at once)")
    parser.add_argument("--k", type=int, default=5000, help="importance samples of the NLL (the protocol's 5000)")
    parser.add_argument("--images", type=int, default=0, help="evaluate the first N test images; 0 = all")
    parser.add_argument("--out", default="anytime")
    parser.add_argument("--table", metavar="OUT", help="print the table of a finished run in OUT and stop")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 600 images, tiny budgets; no figures")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in OUT (the same options): finished jobs are skipped, trainings resume "
        "from their checkpoints, evaluations from their finished shards",
    )
    options = parser.parse_args(argv)
    if options.quick:
        options.budgets, options.k, options.images = [1.0, 2.0], 10, 50
    if options.table:
        print(table(read_rows(Path(options.table))))
        return
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs, baseline, baseline_log = train_jobs(options, out)
    if not options.resume and (baseline_log.exists() or any(log.exists() for _, log in jobs)):
        raise SystemExit(f"{out} holds an anytime run; pass --resume to continue it, or give another --out")
    started = time.perf_counter()

    def run(argv: list[str], log: Path, kind: str, where: Path) -> None:
        command = resumed(options, argv, log, kind, where) if options.resume else argv
        if command is None:
            print(f"done already: {log.name}", flush=True)
        else:
            run_logged(command, log)

    with ThreadPoolExecutor(max_workers=2) as pool:
        slot_b = pool.submit(run, baseline, baseline_log, "baseline", out)
        for argv, log in jobs:  # slot A, in turn
            run(argv, log, "train", Path(argv[argv.index("--out") + 1]))
        slot_b.result()
        print(f"trained in {time.perf_counter() - started:.0f} s; evaluating", flush=True)
        evaluations = [
            pool.submit(run, evaluate_command(options, run_dir), run_dir.with_suffix(".eval.log"), "evaluate", run_dir)
            for _, _, run_dir in models(options, out)
        ]
        for future in evaluations:
            future.result()
    print(table(collect(options, out)))
    print(f"wrote {out / 'anytime.csv'} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
