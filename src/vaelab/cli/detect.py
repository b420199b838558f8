"""`vaelab detect`: out-of-distribution and anomaly detection with a trained model.

    vaelab detect fit   --checkpoint RUN --out DET [--statistic combined] [--fpr 0.05] [--k 16]  (--split validation)
    vaelab detect score --checkpoint RUN --detector DET/detector.json --out DIR [data options]
                        [--against DATASET [--against-data-dir P] [--against-split test] [--against-size N]]
                        [--outlier-labels L ...]

`fit` computes the statistic on in-distribution images (the run's validation split by default) and writes
DET/detector.json: their scores and the threshold at the chosen false-positive rate, tied to the model's weights.
`score` writes per image the statistic, a p-value against the fit set and a flag (detect.csv, detect.npz),
binarizing as the detector was fitted (another --binarize is refused). With known out-of-distribution images
(`--against`) or labels that mark outliers (`--outlier-labels`), it prints AUROC, AUPRC and the false-positive
rate at 95 % true positives and draws detect.png (histograms and ROC).
Both run in the per-image runner's resumable shards.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaelab.cli import common
from vaelab.errors import VaelabError

DETECTOR_NAME = "detector.json"
STATISTIC_NAMES = (  # vaelab.detection.STATISTICS, the default first
    "combined",
    "dose",
    "residual",
    "orientation",
    "upside-down",
    "complexity",
    "nll",
    "llr",
    "regret",
    "typicality",
)


def add_parser(subparsers: Any) -> None:
    """Register `vaelab detect fit|score` with func=run."""
    parser = subparsers.add_parser(
        "detect",
        help="out-of-distribution detection: fit a detector on in-distribution images, score new ones",
        description="Fit an out-of-distribution detector on in-distribution images (fit), or score images "
        "with it and measure it against known outliers (score).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="{fit,score}")
    fit = actions.add_parser(
        "fit",
        help="fit a detector on in-distribution images -> DET/detector.json",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_and_data_arguments(fit, default_split="validation")
    fit.add_argument("--statistic", choices=STATISTIC_NAMES, default=STATISTIC_NAMES[0], help="what scores an image")
    fit.add_argument("--fpr", type=float, default=0.05, help="false-positive rate the threshold is set for")
    fit.add_argument("--k", type=int, default=16, help="importance samples of each image's bound")
    fit.add_argument("--regret-steps", type=int, default=20, help="refit steps of the 'regret' statistic")
    fit.add_argument(
        "--draws", type=int, default=4, help="Bernoulli draws averaged per image (dynamically binarized models)"
    )
    common.add_output_arguments(fit)
    score = actions.add_parser(
        "score",
        help="score images with a fitted detector -> DIR/detect.csv, detect.npz (and detect.png)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_and_data_arguments(score)
    score.add_argument("--detector", required=True, help="a detector.json written by `vaelab detect fit`")
    score.add_argument("--against", choices=common.DATASETS, default=None, help="known out-of-distribution data")
    score.add_argument("--against-data-dir", default=None, help="where --against's files are")
    score.add_argument("--against-split", choices=("train", "test"), default="test", help="--against's split")
    score.add_argument("--against-size", type=int, default=0, help="the first N --against images; 0 = all")
    score.add_argument("--against-image-size", type=int, default=None, help="resize --against's images (as stored)")
    score.add_argument(
        "--outlier-labels", type=int, nargs="+", default=None, help="labels that mark outliers in the scored set"
    )
    common.add_output_arguments(score)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelab.distributed import pick_device

    device = pick_device(args.device)
    if args.action == "fit":
        if not 0 < args.fpr < 1 or min(args.k, args.regret_steps, args.draws) < 1:
            raise VaelabError(
                f"--fpr must lie in (0, 1) and --k, --regret-steps, --draws be >= 1 (got {args.fpr}, {args.k}, "
                f"{args.regret_steps}, {args.draws})"
            )
        directory = common.prepare_out(args.out, [DETECTOR_NAME, "fit.csv"], args.overwrite)
        with common.lock_out(directory, "detect fit"):
            return _fit(args, device, directory)
    directory = common.prepare_out(args.out, ["detect.csv", "detect.npz", "detect.png"], args.overwrite)
    with common.lock_out(directory, "detect score"):
        return _score(args, device, directory)


def _fit(args: argparse.Namespace, device: Any, directory: Path) -> int:
    from vaelab.detection import OODDetector

    from vaelab.checkpoint import load_model

    loaded = load_model(args.checkpoint)
    config = loaded[1]
    if args.split == "validation" and args.dataset is None and config.validation_size == 0:
        args.split = "test"  # the run held none out: its test split is the nearest unseen data
        print("the run held out no validation images (--validation-size 0): fitting on its test split")
    binarization = config.binarize if args.binarize == "auto" else args.binarize
    args.binarize = "none"  # the detector draws its own binarizations of the grey images
    inputs = common.open_inputs(args, device, loaded)
    detector = OODDetector(
        inputs.model,
        args.statistic,
        fpr=args.fpr,
        k=args.k,
        seed=args.seed,
        binarize=binarization,
        regret_steps=args.regret_steps,
        draws=args.draws,
    )
    print(
        f"fitting a '{args.statistic}' detector on {inputs.selection.description} (binarization: {binarization}"
        f"{f', {detector.draws} draws per image' if binarization == 'dynamic' else ''}) of {inputs.checkpoint}"
    )
    values, store = _values(args, inputs, detector, directory)
    detector.fit_values(values)
    saved = detector.save(directory / DETECTOR_NAME)
    fit_scores = detector.score_values(values)
    table = common.write_csv(directory, "fit", inputs, {"score": fit_scores})
    store.remove()
    flagged = float((fit_scores > detector.threshold).mean())
    print(
        f"threshold {detector.threshold:.4f} at a false-positive rate of {args.fpr:.3f} "
        f"({flagged:.3f} of these fit images lie beyond it)"
    )
    print(f"wrote {saved}, {table}")
    return 0


def _score(args: argparse.Namespace, device: Any, directory: Path) -> int:
    import numpy as np

    from vaelab.checkpoint import load_model
    from vaelab.detection import OODDetector, detection_metrics, roc_curve
    from vaelab.plots import detection_figure, save_png

    loaded = load_model(args.checkpoint)
    detector = OODDetector.load(args.detector, loaded[0])
    if args.binarize not in ("auto", detector.binarize):
        raise VaelabError(
            f"--binarize {args.binarize}: the detector {args.detector} was fitted with binarization "
            f"{detector.binarize} and scores images so; drop --binarize (or pass {detector.binarize}), or refit it "
            f"with `vaelab detect fit --binarize {args.binarize}`"
        )
    args.binarize = "none"  # the detector draws its binarizations of the grey images, as when it was fitted
    inputs = common.open_inputs(args, device, loaded)
    detector.model = inputs.model  # the same model, now on the device
    print(f"scoring {inputs.selection.description} with the '{detector.statistic}' detector {args.detector}")
    values, store = _values(args, inputs, detector, directory)
    result = _judged(detector, values)
    scores = result["score"]
    meta = {**common.base_meta(inputs, device), "detector": str(args.detector), "statistic": detector.statistic}
    written = [common.write_csv(directory, "detect", inputs, result)]
    print(f"{int(result['flagged'].sum())} of {scores.size} images flagged (threshold {detector.threshold:.4f})")

    outside, title = None, ""
    if args.against is not None:
        against = _against(args, inputs, detector, device, directory)
        outside, title = against["score"], f"{inputs.selection.dataset} against {args.against}"
        result.update({f"against_{name}": value for name, value in against.items()})
    elif args.outlier_labels is not None:
        marked = np.isin(inputs.selection.labels.numpy(), args.outlier_labels)
        if marked.all() or not marked.any():
            raise VaelabError(
                f"--outlier-labels {' '.join(map(str, args.outlier_labels))} mark {int(marked.sum())} of "
                f"{marked.size} images; both inliers and outliers are needed to measure a detector"
            )
        outside, title = scores[marked], f"labels {args.outlier_labels} as outliers"
        scores = scores[~marked]
    written.append(common.write_npz(directory, "detect", inputs, result, meta))
    roc = None
    if outside is not None:
        measured = detection_metrics(scores, outside)
        labels = np.r_[np.zeros(scores.size, bool), np.ones(outside.size, bool)]
        fpr, tpr, _ = roc_curve(np.r_[scores, outside], labels)
        roc = (fpr, tpr)
        print(
            f"{title}: AUROC {measured['auroc']:.4f}, AUPRC {measured['auprc']:.4f}, "
            f"FPR at 95% TPR {measured['fpr95']:.4f} ({scores.size} in, {outside.size} out)"
        )
        title += f": AUROC {measured['auroc']:.4f}"
    figure = detection_figure(scores, outside, detector.threshold, roc, title)
    written.append(save_png(figure, directory / "detect.png"))
    store.remove()
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _values(args: argparse.Namespace, inputs: Any, detector: Any, directory: Path, verb: str = "detect") -> Any:
    """The detector's per-image values over inputs.x, in the runner's resumable shards."""
    settings = {
        "statistic": detector.statistic,
        "k": detector.k,
        "regret_steps": detector.regret_steps,
        "draws": detector.draws,
        "detector_binarize": detector.binarize,
        "detector_seed": detector.seed,
    }
    merged, store = common.run_pass(
        args, inputs, None, directory, verb, settings, lambda model, part, first: detector.values(part, first)
    )
    return merged, store


def _against(args: argparse.Namespace, inputs: Any, detector: Any, device: Any, directory: Path) -> dict[str, Any]:
    """Score the --against images (known outliers) with the same detector: index, label, file (where they have
    file names), then _judged's columns."""
    import copy

    other = copy.copy(args)
    other.dataset, other.data_dir, other.split = args.against, args.against_data_dir, args.against_split
    other.size, other.image_size = args.against_size, args.against_image_size
    try:
        against = common.open_inputs(other, device, (inputs.model, inputs.train_config))
    except VaelabError as error:
        raise VaelabError(f"--against {args.against}: {error}") from None
    print(f"against {against.selection.description}")
    values, store = _values(other, against, detector, directory, verb="against")
    store.remove()
    return {**common.identity_columns(against.selection), **_judged(detector, values)}


def _judged(detector: Any, values: Any) -> dict[str, Any]:
    """Per image: the detector's score, its p-value against the fit set, the flag, and for 'combined' each
    question's p-value (which one an image fails)."""
    scores = detector.score_values(values)
    return {
        "score": scores,
        "p_value": detector.p_values_of(scores),
        "flagged": scores > detector.threshold,
        **detector.part_p_values(values),
    }
