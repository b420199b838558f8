"""`vaelab sample`: draw z ~ p(z) and save the decoder means E[x|z] as a grid."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaelab.errors import VaelabError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="draw new images from a trained model",
        description="Draw z ~ p(z) and save the decoder means E[x|z] as a grid.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file or the run directory that holds it")
    parser.add_argument("--n", type=int, default=64, help="number of samples")
    parser.add_argument("--columns", type=int, default=8, help="images per row")
    parser.add_argument("--seed", type=int, default=0, help="seed of the z draws")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vaelab.checkpoint import load_model
    from vaelab.models import sample_means
    from vaelab.plots import image_grid

    if args.n < 1 or args.columns < 1:
        raise VaelabError(f"--n and --columns must be >= 1 (got {args.n}, {args.columns})")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise VaelabError(f"--out must name a .png file (got {out})")
    if not out.parent.is_dir():
        raise VaelabError(f"directory {out.parent} does not exist; create it or choose another --out")
    model, _ = load_model(args.checkpoint)
    images = sample_means(model, args.n, torch.Generator().manual_seed(args.seed)).numpy()
    if model.spec.shape is None:
        raise VaelabError(
            f"the model's {model.spec.input_dim} inputs are not an image (no image_shape, not a square); "
            "train it with an image shape to draw samples"
        )
    image_grid(images, args.columns, title=f"{args.n} samples, seed {args.seed}", image_shape=model.spec.shape).savefig(
        out
    )
    print(f"wrote {out}")
    return 0
