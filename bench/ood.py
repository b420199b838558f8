"""Out-of-distribution detection with vaelab's own small models: every statistic of vaelab.detection on the
standard pairs, AUROC / AUPRC / FPR at 95 % TPR and the scoring time per image, in one table.

    .venv/bin/python bench/ood.py [--epochs 10 | --budget SECONDS [--train-threads T]] [--images 2000]
        [--regret-images 500] [--k 16] [--threads 1] [--out /tmp/ood] [--no-eight-bit] [--throughput-images 200]
        [--quick]

Trains two-layer Bernoulli VAEs (dynamically binarized, as the likelihood presets) on MNIST and on Fashion-MNIST
with their last `--fit-images` training images held out, for --epochs or for --budget seconds each (a cosine
learning-rate schedule laid over the time; the record's figures: --budget 240 --train-threads 2). Each
OODDetector is fitted on those held-out images and scores the first `--images` test images of the
in-distribution set and of each out-of-distribution set: the other dataset, uniform noise, constant images and
the in-distribution test images flipped upside down.
A last pair scores Fashion-MNIST against MNIST under a one-layer VAE of their 8-bit pixels (a discretized
logistic likelihood, grey levels kept). Checkpoints go to OUT/model-DATASET (reused by a later run); OUT/ood.json
holds every figure. `--quick` runs the same on small synthetic images with a tiny model in seconds (the test
suite's check). The last table is `vaelab score`'s images per second at k = 100 for three presets' networks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from vaelab.checkpoint import CHECKPOINT_NAME, load_model
from vaelab.config import ModelSpec, TrainConfig
from vaelab.detection import STATISTICS, OODDetector, detection_metrics
from vaelab.training import train

MODEL = ModelSpec(latent_dims=(32, 16), hidden=(256, 128), depth=2, activation="tanh")
EIGHT_BIT_MODEL = ModelSpec(latent_dims=(32,), hidden=(256,), depth=2, likelihood="logistic")  # 8-bit pixels
# The 8-bit pair's statistics: llr needs two layers, regret is the slow one.
EIGHT_BIT_STATISTICS = ("nll", "complexity", "typicality", "dose", "residual", "upside-down", "orientation", "combined")
QUICK_MODEL = ModelSpec(latent_dims=(4, 2), hidden=(32, 16), depth=1, activation="tanh")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--budget",
        type=float,
        default=0.0,
        help="train the two Bernoulli models for this many seconds each instead of --epochs (cosine schedule)",
    )
    parser.add_argument("--train-threads", type=int, default=0, help="threads for training; 0 = --threads")
    parser.add_argument("--images", type=int, default=2000, help="test images per set")
    parser.add_argument("--fit-images", type=int, default=5000, help="held-out training images to fit on")
    parser.add_argument("--regret-images", type=int, default=500, help="images per set for the slow 'regret'")
    parser.add_argument("--k", type=int, default=16, help="importance samples per bound")
    parser.add_argument("--statistics", nargs="+", default=list(STATISTICS), choices=list(STATISTICS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ood"))
    parser.add_argument(
        "--throughput-images", type=int, default=200, help="images timed per preset by `score` at k = 100; 0 = skip"
    )
    parser.add_argument(
        "--no-eight-bit", dest="eight_bit", action="store_false", help="skip the pair under an 8-bit likelihood"
    )
    parser.add_argument("--quick", action="store_true", help="tiny synthetic data and model, in seconds")
    return parser.parse_args(argv)


# --- data: uint8 images (N, 28, 28) ------------------------------------------------------------------------
def synthetic(kind: str, count: int, seed: int) -> torch.Tensor:
    """--quick's stand-ins for two datasets: a bright square at a random place ("squares"), or a bright
    horizontal bar ("bars"), on a dark background with a little noise."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 40, (count, 28, 28), generator=generator, dtype=torch.uint8)
    corners = torch.randint(2, 18, (count, 2), generator=generator)
    for image, (row, column) in zip(images, corners.tolist()):
        if kind == "squares":
            image[row : row + 8, column : column + 8] = 230
        else:
            image[row : row + 3, 2:26] = 230
    return images


def datasets(args: argparse.Namespace) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (training images, test images)."""
    if args.quick:
        return {
            name: (synthetic(name, 600, 1 + i), synthetic(name, 200, 11 + i), torch.arange(200) % 10)
            for i, name in enumerate(("squares", "bars"))
        }
    from vaelab.data import load_dataset

    loaded = {name: load_dataset(name, progress=False) for name in ("fashion-mnist", "mnist")}
    return {name: (data.train.images, data.test.images, data.test.labels) for name, data in loaded.items()}


ASYMMETRIC_DIGITS = (2, 4, 5, 6, 7, 9)  # 0, 1, 3 and 8 look much the same upside down


def outliers(test: torch.Tensor, labels: torch.Tensor, count: int, seed: int) -> dict[str, torch.Tensor]:
    """The synthetic out-of-distribution sets built from the in-distribution test images; flipped digits also
    restricted to the classes that a vertical flip changes."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (count, 1, 1), generator=generator, dtype=torch.uint8)
    return {
        "uniform noise": torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8),
        "constant": levels.expand(count, 28, 28).contiguous(),
        "flipped vertically": test[:count].flip(1).contiguous(),
        "flipped, digits 2 4 5 6 7 9": test[torch.isin(labels, torch.tensor(ASYMMETRIC_DIGITS))][:count]
        .flip(1)
        .contiguous(),
    }


# --- models --------------------------------------------------------------------------------------------------
def trained_model(name: str, train_images: torch.Tensor, args: argparse.Namespace, eight_bit: bool = False):
    """The two-layer Bernoulli VAE (or, eight_bit, the one-layer discretized-logistic VAE of 8-bit pixels) for
    dataset `name` from OUT/model-NAME[-8bit], trained there first if absent."""
    run_dir = args.out / f"model-{name}{'-8bit' if eight_bit else ''}"
    if (run_dir / CHECKPOINT_NAME).exists():
        return load_model(run_dir / CHECKPOINT_NAME)
    spec = QUICK_MODEL if args.quick else EIGHT_BIT_MODEL if eight_bit else MODEL
    timed = args.budget and not (args.quick or eight_bit)  # the 8-bit pair's model trains --epochs
    budget = {"budget": args.budget, "lr_schedule": "cosine"} if timed else {}
    config = TrainConfig(
        dataset=name if not args.quick else "array",
        model=dataclasses.replace(spec, likelihood="logistic") if eight_bit else spec,
        epochs=2 if args.quick else 1_000_000 if budget else args.epochs,
        binarize="none" if eight_bit else "dynamic",
        validation_size=args.fit_images,
        threads=args.train_threads or args.threads,
        seed=args.seed + 1,
        **budget,
    )
    started = time.perf_counter()
    result = train(config, train_images, train_images[:100], run_dir, progress=False)
    torch.set_num_threads(args.threads)  # scoring is timed on --threads
    length = f"{args.budget:.0f} s of budget" if budget else f"{config.epochs} epochs"
    print(f"trained {name}: {length} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return result.model, config


# --- scoring throughput --------------------------------------------------------------------------------------
THROUGHPUT_PRESETS = ("pytorch-example", "vampprior", "anytime-resnet")  # an MLP, a VampPrior MLP, a resnet


def throughput(images: int, k: int, seed: int) -> list[dict[str, float | str]]:
    """Images per second of `vaelab score`'s per-image pass (L_1 and L_k, no Laplace) for each preset's
    network on binarized noise; the weights' values do not change the cost."""
    from vaelab.evaluation.per_image import score_block
    from vaelab.evaluation.shards import ShardPlan
    from vaelab.models import build_model
    from vaelab.presets import PRESETS

    rows = []
    for name in THROUGHPUT_PRESETS:
        spec = PRESETS[name].config.model
        model = build_model(spec).eval()
        x = torch.rand(images, spec.input_dim, generator=torch.Generator().manual_seed(seed)).bernoulli()
        plan = ShardPlan((1, k), seed, False, 1)
        score_block(model, x[:2], 0, plan, torch.device("cpu"))  # warm-up: first-call allocations
        started = time.perf_counter()
        score_block(model, x, 0, plan, torch.device("cpu"))
        seconds = time.perf_counter() - started
        rows.append({"preset": name, "network": spec.network, "k": k, "images_per_s": images / seconds})
    return rows


# --- the table -----------------------------------------------------------------------------------------------
def evaluate_pair(detector: OODDetector, inside: torch.Tensor, outside: torch.Tensor) -> dict[str, float]:
    scores_in = detector.score(inside)
    ms_per_image = 1000 * detector.seconds_per_image
    return {**detection_metrics(scores_in, detector.score(outside)), "ms_per_image": ms_per_image}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.images, args.fit_images, args.regret_images, args.k = 100, 200, 50, 4
    data = datasets(args)
    names = list(data)
    rows = []
    for in_name in names:
        model, config = trained_model(in_name, data[in_name][0], args)
        fit_images = data[in_name][0][-args.fit_images :]
        test = data[in_name][1][: args.images]
        sets = {names[1 - names.index(in_name)]: data[names[1 - names.index(in_name)]][1][: args.images]}
        if in_name == names[-1]:
            sets.update(outliers(data[in_name][1], data[in_name][2], args.images, args.seed))
        for statistic in args.statistics:
            detector = OODDetector(model, statistic, k=args.k, seed=args.seed, binarize=config.binarize)
            limit = args.regret_images if statistic == "regret" else args.images
            detector.fit(fit_images[: limit * 2] if statistic == "regret" else fit_images)
            for out_name, outside in sets.items():
                figures = evaluate_pair(detector, test[:limit], outside[:limit])
                rows.append({"in": in_name, "out": out_name, "statistic": statistic, "images": limit, **figures})
                print(
                    f"{in_name} -> {out_name}, {statistic}: AUROC {figures['auroc']:.4f}, "
                    f"{figures['ms_per_image']:.2f} ms/image",
                    file=sys.stderr,
                )
    speed = []
    if args.throughput_images:
        speed = throughput(8 if args.quick else args.throughput_images, 4 if args.quick else 100, args.seed)
    if args.eight_bit:  # the first data set against the second, under a model of their 8-bit pixels
        inside, outside_name = names[0], names[1]
        model, config = trained_model(inside, data[inside][0], args, eight_bit=True)
        for statistic in EIGHT_BIT_STATISTICS:
            detector = OODDetector(model, statistic, k=args.k, seed=args.seed, binarize=config.binarize)
            detector.fit(data[inside][0][-args.fit_images :])
            figures = evaluate_pair(detector, data[inside][1][: args.images], data[outside_name][1][: args.images])
            rows.append(
                {"in": f"{inside} (8-bit)", "out": outside_name, "statistic": statistic, "images": args.images}
                | figures
            )
    (args.out / "ood.json").write_text(json.dumps({"detection": rows, "throughput": speed}, indent=1))
    print("| in -> out | statistic | AUROC | AUPRC | FPR95 | ms/image |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['in']} -> {row['out']} | {row['statistic']} | {row['auroc']:.4f} | {row['auprc']:.4f} | "
            f"{row['fpr95']:.4f} | {row['ms_per_image']:.2f} |"
        )
    if speed:
        print(f"\n| preset | network | `vaelab score` images/s at k = {speed[0]['k']} ({args.threads} thread(s)) |")
        print("|---|---|---:|")
        for row in speed:
            print(f"| {row['preset']} | {row['network']} | {row['images_per_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
