"""`vaelab encode`: each image's latent code under a trained model -> latents.csv, latents.npz.

    vaelab encode --checkpoint RUN --out DIR [--dataset D --data-dir P --split test --size N] [--samples S]

Per image and stochastic layer: the posterior mean and log-variance (the mean, not a draw); --samples S adds
S draws z ~ q(z|x) (latents.npz only), seeded by image index.
"""

from __future__ import annotations

import argparse
from typing import Any

from vaelab.cli import common
from vaelab.errors import VaelabError

RESULTS = ["latents.csv", "latents.npz"]


def add_parser(subparsers: Any) -> None:
    """Register `vaelab encode` with func=run."""
    parser = subparsers.add_parser(
        "encode",
        help="latent codes (posterior means and log-variances) of any images",
        description="Encode each image: the posterior mean and log-variance of every stochastic layer, in input "
        "order, to DIR/latents.csv and latents.npz.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_and_data_arguments(parser)
    parser.add_argument("--samples", type=int, default=0, help="also S draws z ~ q(z|x) per image (npz only)")
    common.add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.samples < 0:
        raise VaelabError(f"--samples must be >= 0 (got {args.samples})")
    directory = common.prepare_out(args.out, RESULTS, args.overwrite)
    with common.lock_out(directory, "encode"):
        return _encode(args, directory)


def _encode(args: argparse.Namespace, directory: Any) -> int:
    from vaelab.distributed import pick_device
    from vaelab.evaluation.per_image import encode_block

    device = pick_device(args.device)
    inputs = common.open_inputs(args, device)
    print(f"encoding {inputs.heading(device)}")
    merged, store = common.run_pass(
        args,
        inputs,
        None,
        directory,
        "encode",
        {"samples": args.samples},
        lambda model, part, first: encode_block(model, part, first, args.samples, args.seed),
    )
    table = {name: value for name, value in merged.items() if name != "z"}
    meta = {**common.base_meta(inputs, device), "samples": args.samples, "layers": inputs.model.spec.layers}
    # the table holds the moments; the npz the same arrays and, with --samples, the draws "z" (N, S, D)
    written = [
        common.write_csv(directory, "latents", inputs, table),
        common.write_npz(directory, "latents", inputs, merged, meta),
    ]
    store.remove()
    dims = ", ".join(f"layer {n}: {merged[f'mean_{n}'].shape[1]}" for n in range(1, inputs.model.spec.layers + 1))
    print(f"{inputs.x.shape[0]} images encoded ({dims} dimensions); wrote " + ", ".join(map(str, written)))
    return 0
