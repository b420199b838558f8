"""The likelihood frontier: test NLL against training seconds, one curve per preset.

    .venv/bin/python bench/frontier.py [--presets burda-vae vampprior] [--budget-minutes 30]
        [--out frontier] [--curve-k 100] [--curve-images 1000] [--final-k 5000] [--final-images 10000]

Each preset (vaelab.presets) trains on MNIST under the literature's protocol with a wall-clock
budget (TrainConfig.max_seconds; the epoch that spends it finishes). Along the way, at training
times 15 s, 30 s, 60 s, ... (doubling), the curve records a cheap estimate, -L_k with
k = --curve-k on the first --curve-images test images; at the end, the run's best-on-validation
model gets the full estimate, NLL = -L_5000 on all 10 000 test images with its standard error.
The test images are binarized by one seeded draw (seed 0), as `vaelab evaluate` does.

Writes OUT/frontier.csv (preset, kind = curve | final, seconds, epoch, nll, stderr, test -ELBO,
active units, parameters) and OUT/frontier.png (NLL against seconds, log x axis, the papers'
figures as horizontal marks), and prints the table the README shows.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from vaelab import data
from vaelab.checkpoint import load_model
from vaelab.evaluation import active_units, importance_weighted_evaluation
from vaelab.models import parameter_count
from vaelab.presets import PRESETS, preset_config
from vaelab.training import train

FIRST_CURVE_POINT_S = 15.0
COLUMNS = ("preset", "kind", "seconds", "epoch", "nll", "stderr", "test_elbo", "active_units", "parameters")


def run_preset(name: str, options: argparse.Namespace, train_x: torch.Tensor, test_x: torch.Tensor) -> list[dict]:
    """Train preset `name` under the budget; return its curve rows and its final row."""
    config = dataclasses.replace(preset_config(name), max_seconds=60.0 * options.budget_minutes)
    if options.epochs:
        config = dataclasses.replace(config, epochs=options.epochs)
    run_dir = Path(options.out) / name
    rows: list[dict] = []
    next_point = [FIRST_CURVE_POINT_S]
    curve_x = test_x[: options.curve_images]

    def on_epoch(row: dict, model: torch.nn.Module) -> None:
        trained = sum(r["seconds"] for r in history) + row["seconds"]
        if trained < next_point[0] and trained < config.max_seconds:
            return
        while next_point[0] <= trained:
            next_point[0] *= 2
        model.eval()
        estimate = importance_weighted_evaluation(model, curve_x, [options.curve_k], seed=0).bounds[options.curve_k]
        model.train()
        rows.append(
            {
                "preset": name,
                "kind": "curve",
                "seconds": trained,
                "epoch": row["epoch"],
                "nll": -estimate.mean,
                "stderr": estimate.stderr,
                "test_elbo": row["test_loss"],
                "active_units": "",
                "parameters": "",
            }
        )
        print(
            f"  {name}: {trained:8.1f} s, epoch {int(row['epoch'])}: -L_{options.curve_k} = {-estimate.mean:.2f}",
            flush=True,
        )

    history: list[dict] = []

    def record(row: dict, model: torch.nn.Module) -> None:
        on_epoch(row, model)
        history.append(row)

    result = train(config, train_x, test_x, run_dir, progress=False, on_epoch=record)
    best = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "checkpoint.pt"
    model, _ = load_model(best)
    final_x = test_x[: options.final_images]
    started = time.perf_counter()
    final = importance_weighted_evaluation(model, final_x, [1, options.final_k], seed=0, progress=sys.stderr.isatty())
    active, _ = active_units(model, final_x)
    trained = sum(r["seconds"] for r in result.history)
    rows.append(
        {
            "preset": name,
            "kind": "final",
            "seconds": trained,
            "epoch": result.history[-1]["epoch"],
            "nll": -final.bounds[options.final_k].mean,
            "stderr": final.bounds[options.final_k].stderr,
            "test_elbo": -final.bounds[1].mean,
            "active_units": active,
            "parameters": parameter_count(model),
        }
    )
    print(
        f"  {name}: final NLL -L_{options.final_k} = {rows[-1]['nll']:.2f} ± {rows[-1]['stderr']:.2f} "
        f"({time.perf_counter() - started:.0f} s to evaluate), best of {len(result.history)} epochs",
        flush=True,
    )
    return rows


def figure(rows: list[dict], title: str) -> Figure:
    """NLL against training seconds (log x), one line per preset, the papers' figures dashed."""
    fig = Figure(figsize=(7.5, 4.8), dpi=100, layout="constrained")
    axes = fig.add_subplot()
    papers = []
    for index, name in enumerate(dict.fromkeys(row["preset"] for row in rows)):
        color = f"C{index}"
        curve = [row for row in rows if row["preset"] == name and row["kind"] == "curve"]
        final = [row for row in rows if row["preset"] == name and row["kind"] == "final"]
        axes.plot([r["seconds"] for r in curve], [r["nll"] for r in curve], marker="o", color=color, label=name)
        for row in final:
            axes.errorbar(row["seconds"], row["nll"], yerr=row["stderr"], marker="*", markersize=12, color=color)
        paper = PRESETS[name].paper_nll if name in PRESETS else None
        if paper is not None:
            axes.axhline(paper, color=color, linestyle="--", linewidth=1)
            papers.append((paper, f"{name}, paper: {paper}", color))
    place_paper_labels(axes, papers)
    axes.set_xscale("log")
    axes.set_xlabel("training seconds (this machine)")
    axes.set_ylabel("test NLL, nats per image")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    return fig


LABEL_GAP = 0.045  # the least vertical distance between two paper labels, in axes fractions (8-point text)


def place_paper_labels(axes: object, papers: list[tuple[float, str, str]]) -> list[float]:
    """Label each paper figure (value, text, colour) at the plot's left edge, just above its dashed line;
    labels closer than LABEL_GAP are pushed up in order of value, so none overlaps another.
    Returns the labels' heights in axes fractions (lowest value first)."""
    axes.autoscale_view()
    low, high = axes.get_ylim()
    heights: list[float] = []
    for value, text, color in sorted(papers):
        height = (value - low) / (high - low)
        if heights:
            height = max(height, heights[-1] + LABEL_GAP)
        heights.append(height)
        axes.text(0.01, height, text, transform=axes.transAxes, color=color, fontsize=8, va="bottom")
    return heights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["burda-vae", "vampprior"], choices=sorted(PRESETS))
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--epochs", type=int, default=0, help="override the presets' epochs (0: theirs)")
    parser.add_argument("--out", default="frontier")
    parser.add_argument("--curve-k", type=int, default=100)
    parser.add_argument("--curve-images", type=int, default=1000)
    parser.add_argument("--final-k", type=int, default=5000)
    parser.add_argument("--final-images", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--replot",
        nargs="+",
        default=None,
        metavar="CSV",
        help="train nothing: merge these frontier.csv files into OUT",
    )
    parser.add_argument("--title", default="", help="with --replot: the figure's title (say what the stars are)")
    options = parser.parse_args()
    if options.replot:
        rows = [row for path in options.replot for row in read_rows(path)]
        title = (
            options.title
            or "dynamically binarized MNIST; curve: -L_100 on 1000 test images, star: -L_5000 on all 10 000"
        )
        write_outputs(rows, options.out, title)
        return
    if options.threads:
        torch.set_num_threads(options.threads)
    dataset = data.load_dataset("mnist")
    train_x = data.pixels(dataset.train.images)
    test_x = data.binarize(data.pixels(dataset.test.images), "dynamic", torch.Generator().manual_seed(0))
    Path(options.out).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name in options.presets:
        print(f"{name}: {PRESETS[name].paper}", flush=True)
        rows += run_preset(name, options, train_x, test_x)
        write_rows(rows, Path(options.out) / "frontier.csv")
    title = (
        f"dynamically binarized MNIST, {options.budget_minutes:g} min per preset, "
        f"{torch.get_num_threads()} threads; curve -L_{options.curve_k} on {options.curve_images} test images, "
        f"star -L_{options.final_k} on {options.final_images}"
    )
    write_outputs(rows, options.out, title)


def write_rows(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a frontier.csv, numbers as numbers (blank cells stay blank)."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        for key in COLUMNS[2:]:
            if row[key] != "":
                row[key] = float(row[key]) if key not in ("epoch", "active_units", "parameters") else int(row[key])
    return rows


def write_outputs(rows: list[dict], out: str | Path, title: str) -> None:
    """OUT/frontier.csv, OUT/frontier.png, and the README's table on stdout."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(rows, out / "frontier.csv")
    figure(rows, title).savefig(out / "frontier.png")
    print("\n| preset | parameters | training s | epochs | test -ELBO | NLL ± stderr | active units | paper |")
    print("|---|---|---|---|---|---|---|---|")
    for row in (r for r in rows if r["kind"] == "final"):
        paper = PRESETS[row["preset"]].paper_nll if row["preset"] in PRESETS else None
        print(
            f"| {row['preset']} | {row['parameters']:,} | {row['seconds']:.0f} | {row['epoch']} | "
            f"{row['test_elbo']:.2f} | {row['nll']:.2f} ± {row['stderr']:.2f} | {row['active_units']} | "
            f"{paper if paper is not None else '-'} |"
        )
    print(f"wrote {out / 'frontier.csv'} and {out / 'frontier.png'}")


if __name__ == "__main__":
    main()
