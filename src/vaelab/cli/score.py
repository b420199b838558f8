"""`vaelab score`: how likely a trained model finds each image -> scores.csv, scores.npz, scores.png.

    vaelab score --checkpoint RUN --out DIR [--dataset D --data-dir P --split test --size N] [--k 1 100]
                 [--laplace] [--seed S] [--overwrite]

Per image: L_k for each k (k = 1 is the ELBO), the ELBO with its reconstruction and KL terms, bits/dim where
the likelihood is a normalised pmf, optionally Laplace and Laplace-IS; in resumable shards (kill, rerun the same
command: the same files), split over torchrun's ranks. Their means are what `vaelab evaluate` reports for the
same images, seed and k.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from vaelab.cli import common
from vaelab.errors import VaelabError

RESULTS = ["scores.csv", "scores.npz", "scores.png"]
SHOWN = 8  # images in each row of scores.png


def add_parser(subparsers: Any) -> None:
    """Register `vaelab score` with func=run."""
    parser = subparsers.add_parser(
        "score",
        help="per-image log-likelihood (IWAE-k, ELBO terms, bits/dim) of any images",
        description="Score each image under a trained model: L_k, the ELBO and its terms, bits/dim, optionally "
        "Laplace; write DIR/scores.csv and scores.npz in input order and scores.png (least and most likely).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_model_and_data_arguments(parser)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 100], help="importance samples of each L_k")
    parser.add_argument(
        "--laplace", action="store_true", help="add Laplace's evidence and Laplace-proposal IS (a Newton search)"
    )
    parser.add_argument("--laplace-k", type=int, default=100, help="samples of Laplace-proposal IS")
    parser.add_argument("--batch-size", type=int, default=0, help="images per batch; 0 = from the memory budget")
    common.add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from vaelab.distributed import setup_distributed

    if any(k < 1 for k in args.k):
        raise VaelabError(f"every --k must be >= 1 (got {' '.join(map(str, args.k))}); e.g. --k 1 100")
    if args.laplace and args.laplace_k < 1:
        raise VaelabError(f"--laplace-k must be >= 1 (got {args.laplace_k})")
    directory = common.prepare_out(args.out, RESULTS, args.overwrite)
    distributed, device = setup_distributed(args.device)
    try:
        with common.lock_out(directory, "score", distributed):
            return _score(args, distributed, device, directory)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _score(args: argparse.Namespace, distributed: Any, device: Any, directory: Any) -> int:
    import numpy as np

    from vaelab.distributions import bits_per_dim
    from vaelab.evaluation.per_image import score_block
    from vaelab.evaluation.runner import is_total
    from vaelab.evaluation.shards import ShardPlan
    from vaelab.plots import image_grid, save_png

    inputs = common.open_inputs(args, device)
    model = inputs.model
    if distributed.is_main:
        print(f"scoring {inputs.heading(device)}")
    plan = ShardPlan(tuple(sorted(set(args.k))), args.seed, args.laplace, args.laplace_k, args.batch_size)
    settings = {"ks": list(plan.ks), "laplace": plan.laplace, "laplace_k": plan.laplace_k, "batch": plan.batch_size}
    merged, store = common.run_pass(
        args,
        inputs,
        distributed,
        directory,
        "score",
        settings,
        lambda model, part, first: score_block(model, part, first, plan, device),
    )
    if merged is None:
        return 0
    values = {name: value for name, value in merged.items() if not is_total(name)}
    dims = model.spec.input_dim
    normalised = model.likelihood.discrete_8bit or (
        model.likelihood.kind == "bernoulli" and inputs.binarization != "none"
    )
    best = f"L_{max(plan.ks)}"
    if normalised:  # -log2 p(x) / dims, for a normalised pmf over the pixels' values
        values["bits_per_dim"] = bits_per_dim(-values[best], dims)
    meta = {
        **common.base_meta(inputs, device),
        "units": "nats per image; bits_per_dim = -L_kmax / (dims ln 2)",
        "ks": list(plan.ks),
        "laplace": plan.laplace,
        "laplace_k": plan.laplace_k if plan.laplace else None,
        "dims": dims,
        "normalised": normalised,
    }
    written = common.write_results(directory, "scores", inputs, values, meta)

    print(f"\n{'per image':<16}{'mean':>12}{'stderr':>9}{'min':>12}{'max':>12}")
    for name, value in values.items():
        array = value.numpy() if hasattr(value, "numpy") else value
        stderr = array.std(ddof=1) / math.sqrt(array.size) if array.size > 1 else float("nan")
        print(f"{name:<16}{array.mean():>12.3f}{stderr:>9.3f}{array.min():>12.3f}{array.max():>12.3f}")
    if not normalised:
        print("bits/dim: not given, the likelihood is not a normalised pmf of these pixels (grey-level Bernoulli)")

    order = np.argsort(values[best].numpy(), kind="stable")
    shown = min(SHOWN, order.size)
    picks = np.concatenate([order[:shown], order[::-1][:shown]])
    pixels = inputs.x[picks].numpy()
    if model.spec.shape is not None:
        figure = image_grid(
            pixels,
            columns=shown,
            title=f"top: the {shown} least likely ({best} lowest first); bottom: the {shown} most likely",
            image_shape=model.spec.shape,
        )
        written.append(save_png(figure, directory / "scores.png"))
    store.remove()
    print("wrote " + ", ".join(str(path) for path in written))
    return 0
