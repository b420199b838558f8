"""`vaelab reconstruct`: each image decoded from its posterior mean -> reconstructions.npz, reconstructions.png.

vaelab reconstruct --checkpoint RUN --out DIR [--dataset D --data-dir P --split test --size N] [--shown 32]
"""

from __future__ import annotations

import argparse
from typing import Any

from vaelab.cli import common
from vaelab.errors import VaelabError

RESULTS = ["reconstructions.npz", "reconstructions.png"]


def add_parser(subparsers: Any) -> None:
    """Register `vaelab reconstruct` with func=run."""
    parser = subparsers.add_parser(
        "reconstruct",
        help="decoder means at the posterior means of any images, as an array and a picture",
        description="Reconstruct each image: E[x|z] at z = E_q[z|x], in input order, to DIR/reconstructions.npz "
        "(inputs and means, (N, C*H*W)) and reconstructions.png (inputs above their reconstructions).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_and_data_arguments(parser)
    parser.add_argument("--shown", type=int, default=32, help="images in the picture (the first N)")
    parser.add_argument("--columns", type=int, default=8, help="images per row of the picture")
    common.add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.shown < 1 or args.columns < 1:
        raise VaelabError(f"--shown and --columns must be >= 1 (got {args.shown}, {args.columns})")
    directory = common.prepare_out(args.out, RESULTS, args.overwrite)
    with common.lock_out(directory, "reconstruct"):
        return _reconstruct(args, directory)


def _reconstruct(args: argparse.Namespace, directory: Any) -> int:
    from vaelab.distributed import pick_device
    from vaelab.evaluation.per_image import reconstruct_block
    from vaelab.plots import reconstruction_grid, save_png

    device = pick_device(args.device)
    inputs = common.open_inputs(args, device)
    shape = common.image_shape_of(inputs.model)
    print(f"reconstructing {inputs.heading(device)}")
    merged, store = common.run_pass(
        args, inputs, None, directory, "reconstruct", {}, lambda model, part, first: reconstruct_block(model, part)
    )
    values = {"input": inputs.x, "mean": merged["mean"]}
    meta = {**common.base_meta(inputs, device), "image_shape": list(shape)}
    npz = common.write_npz(directory, "reconstructions", inputs, values, meta)
    shown = min(args.shown, inputs.x.shape[0])
    figure = reconstruction_grid(
        inputs.x[:shown].numpy(), merged["mean"][:shown].numpy(), min(args.columns, shown), image_shape=shape
    )
    png = save_png(figure, directory / "reconstructions.png")
    store.remove()
    print(f"{inputs.x.shape[0]} images reconstructed; wrote {npz}, {png}")
    return 0
