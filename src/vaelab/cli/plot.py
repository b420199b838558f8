"""`vaelab plot RUN`: the figures of a trained model, written into the run directory (or --out).

manifold.png (decoder means over a grid of the latent), latent_scatter.png (posterior means by
label), interpolations.png, draws.png (draws beside decoder means) and, when the run kept one,
training_strip.png (the same draws decoded after every epoch). `vaelab train` writes the same
figures at the end of a run. Images are drawn in the model's shape (C, H, W), grey or RGB; a model
whose inputs are not an image (a flat vector of non-square length without image_shape) gets
latent_scatter.png only, with a note.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaelab.errors import VaelabError

DEFAULT_SIZE = 2000  # images encoded for the scatter and the principal plane


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw the figures of a trained model",
        description="Write manifold.png, latent_scatter.png, interpolations.png, draws.png and (when the run kept "
        "its per-epoch samples) training_strip.png for a run written by vaelab train.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run directory written by vaelab train")
    parser.add_argument("--out", default=None, help="directory for the figures (default: RUN)")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="the images to encode")
    parser.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help="encode the first N images of the split (scatter, principal plane)",
    )
    parser.add_argument("--spherical", action="store_true", help="interpolate spherically (slerp), not linearly")
    parser.add_argument("--seed", type=int, default=None, help="seed of the pairs and draws (default: the run's seed)")
    parser.set_defaults(func=run)


def check_run_dir(run_dir: Path) -> None:
    """A VaelabError unless run_dir is a directory holding a run's checkpoint.pt and config.json."""
    if not run_dir.exists():
        raise VaelabError(f"{run_dir} does not exist; pass a run directory written by vaelab train --out")
    if not run_dir.is_dir():
        raise VaelabError(f"{run_dir} is not a directory; pass a run directory written by vaelab train --out")
    missing = [name for name in ("checkpoint.pt", "config.json") if not (run_dir / name).is_file()]
    if missing:
        raise VaelabError(
            f"{run_dir} is not a vaelab run (no {' or '.join(missing)}); pass a run directory written by vaelab "
            "train --out"
        )


def run(args: argparse.Namespace) -> int:
    import torch

    from vaelab import data
    from vaelab.checkpoint import load_model
    from vaelab.plots import NOT_AN_IMAGE, write_figures
    from vaelab.visualize import EPOCH_SAMPLES_NAME, epoch_samples_shape, pictures, read_epoch_samples

    run_dir = Path(args.run_dir)
    check_run_dir(run_dir)
    if args.size < 1:
        raise VaelabError(f"--size must be >= 1 (got {args.size})")
    out = Path(args.out) if args.out else run_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VaelabError(f"cannot create {out}: {error.strerror}; choose another --out") from None
    model, config = load_model(run_dir)
    # The images as the run was trained on them (the same size, and the same held-out test part).
    dataset = data.load_run_dataset(config)
    split = getattr(dataset, args.split)
    # The model's inputs as in training: its binarization, a dynamic one drawn once as for the test set.
    x = data.binarize(
        data.pixels(split.images[: args.size]), config.binarize, torch.Generator().manual_seed(config.seed + 1)
    )
    seed = config.seed if args.seed is None else args.seed
    arrays = pictures(model, x, split.labels[: args.size], seed=seed, spherical=args.spherical)
    if arrays.image_shape is None:
        print(NOT_AN_IMAGE.format(pixels=model.spec.input_dim))
    samples = run_dir / EPOCH_SAMPLES_NAME
    # A strip of another shape than the model's (a file from another run) is left out rather than misdrawn.
    strip = read_epoch_samples(samples) if epoch_samples_shape(samples) == arrays.image_shape else None
    written = write_figures(arrays, out, strip=strip, split=args.split, dataset=config.dataset)
    print(f"wrote {out}/{{{','.join(path.name for path in written)}}}")
    return 0
