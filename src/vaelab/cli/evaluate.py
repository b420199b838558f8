"""`vaelab evaluate`: test log-likelihood in nats (IWAE-k), Laplace evidence, active units -> eval.json.

    vaelab evaluate --checkpoint RUN [--k 1 10 100 1000 5000] [--split test] [--binarize auto]
                    [--size N] [--seed S] [--laplace-k K] [--laplace | --no-laplace] [--out DIR] [--device auto]

`run` prints the table and writes eval.json; a progress bar shows each estimator's time left.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from vaelab.config import BINARIZE_MODES, EvaluateConfig, TrainConfig, to_dict
from vaelab.errors import VaelabError
from vaelab.cli import common
from vaelab.cli.common import SHARD_IMAGES
from vaelab.io import atomic_write

EVAL_NAME = "eval.json"
EVAL_VERB = "eval"
PARTIAL_PREFIX = (
    f"{EVAL_VERB}.partial-"  # finished shards of an evaluation in progress, removed once eval.json is written
)
ACTIVE_THRESHOLD = 0.01  # Burda et al. (2015): unit u is active when Cov_x(E_q[z_u]) > 0.01


def add_parser(subparsers: Any) -> None:
    """Register `vaelab evaluate` with func=run."""
    defaults = EvaluateConfig()
    parser = subparsers.add_parser(
        "evaluate",
        help="estimate the test log-likelihood (IWAE-k, Laplace) and count active units",
        description="Estimate log p(x) in nats per image on a split: the importance-weighted bounds L_k "
        "(k = 1 is the ELBO), Laplace's evidence and Laplace-proposal importance sampling; count active "
        "units; print a table and write eval.json into the run directory (or --out).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file or the run directory that holds it")
    parser.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=list(defaults.ks),
        help="importance samples for each L_k; all come from one draw of max(k)",
    )
    parser.add_argument("--split", choices=("train", "test"), default=defaults.split, help="which split to evaluate")
    parser.add_argument(
        "--binarize",
        choices=("auto", *BINARIZE_MODES),
        default=defaults.binarize,
        help="pixel targets: auto = as the model was trained (dynamic: one seeded Bernoulli draw of the split)",
    )
    parser.add_argument(
        "--size", type=int, default=defaults.size, help="evaluate the first N images of the split; 0 = all"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of every draw (samples, dynamic binarization)"
    )
    parser.add_argument(
        "--laplace-k", type=int, default=defaults.laplace_k, help="samples of Laplace-proposal importance sampling"
    )
    laplace = parser.add_mutually_exclusive_group()
    laplace.add_argument(
        "--laplace",
        action="store_true",
        help="run the Laplace estimates also for a convolutional or residual decoder (its Newton mode search "
        "costs seconds per image there; by default they run for MLP decoders only)",
    )
    laplace.add_argument(
        "--no-laplace", action="store_true", help="skip the Laplace estimates (the Newton search is the slow part)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="images per batch; 0 = chosen from the memory budget",
    )
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="CPU threads; 0 = torch's default")
    parser.add_argument("--out", default=None, help="directory for eval.json (default: the checkpoint's run directory)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--shard-images",
        type=int,
        default=SHARD_IMAGES,
        help="images per shard: each finished shard is kept, so a killed evaluation resumes from the shards done, "
        "and torchrun's ranks share the shards",
    )
    parser.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)  # overrides the training run's data_dir
    parser.set_defaults(func=run)


def load_split(train_config: TrainConfig, split: str, data_dir: str | None) -> torch.Tensor:
    """The split's uint8 images (N, [C,] H, W) of the data set the model was trained on, converted as it was."""
    from vaelab import data

    dataset = data.load_run_dataset(train_config, data_dir)
    return getattr(dataset, split).images


def _evaluate(args: argparse.Namespace, distributed: Any, device: torch.device) -> int:
    """Evaluate the checkpoint; print the table; write eval.json atomically. Returns the exit status."""

    from vaelab import checkpoint, data
    from vaelab.checkpoint import load_model
    from vaelab.distributions import bits_per_dim
    from vaelab.evaluation import active_units
    from vaelab.data.selection import Selection
    from vaelab.evaluation.shards import ShardPlan, estimates, evaluate_shard
    from vaelab.integrity import sha256_file

    checkpoint_path = checkpoint.resolve(args.checkpoint)
    model, train_config = load_model(checkpoint_path)
    # Laplace's Newton search costs far more than the bounds for a conv decoder: off there unless asked for.
    slow_laplace = model.spec.network != "mlp"
    run_laplace = args.laplace or (not args.no_laplace and not slow_laplace)
    if slow_laplace and not run_laplace and not args.no_laplace and distributed.is_main:
        print(
            f"Laplace estimates skipped: the {model.spec.network} decoder's Newton mode search costs seconds per "
            "image, far more than the bounds; --laplace runs them (the progress bar then shows the time left)"
        )
    config = EvaluateConfig(
        checkpoint=args.checkpoint,
        ks=tuple(sorted(set(args.k))),
        split=args.split,
        binarize=args.binarize,
        seed=args.seed,
        size=args.size,
        laplace=run_laplace,
        laplace_k=args.laplace_k,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
    )
    if args.shard_images < 1:
        raise VaelabError(f"--shard-images must be >= 1 (got {args.shard_images})")
    if any(k < 1 for k in args.k):
        raise VaelabError(f"every --k must be >= 1 (got {' '.join(map(str, args.k))}); e.g. --k 1 100")
    out_dir = Path(args.out) if args.out else checkpoint_path.parent
    if config.threads:
        torch.set_num_threads(config.threads)
    model = model.to(device)

    # --- data: the split, binarized as the model was trained unless told otherwise -------------
    images = load_split(train_config, config.split, args.data_dir)
    if config.size:
        if config.size > images.shape[0]:
            raise VaelabError(
                f"--size {config.size} exceeds the {images.shape[0]} images of the {config.split} split; use a "
                "smaller --size or 0 for all"
            )
        images = images[: config.size]
    x = data.pixels(images)  # (N, P) in (C, H, W) order
    if x.shape[1] != model.spec.input_dim:
        raise VaelabError(f"the data has {x.shape[1]} pixels per image but the model expects {model.spec.input_dim}")
    mode = train_config.binarize if config.binarize == "auto" else config.binarize
    x = data.binarize(x, mode, torch.Generator().manual_seed(config.seed))
    if mode == "none" and not model.likelihood.discrete_8bit:
        print(
            "warning: grey-level targets: a Bernoulli likelihood on pixels in (0, 1) is not a normalised density, "
            "so these 'log-likelihoods' are not comparable with published binarized-MNIST figures",
            file=sys.stderr,
        )
    print(
        f"evaluating {checkpoint_path} on {x.shape[0]} {train_config.dataset} {config.split} images "
        f"(binarization: {mode}{f', Bernoulli draw seed {config.seed}' if mode == 'dynamic' else ''}), device "
        f"{device}, {torch.get_num_threads()} threads"
    )

    # --- estimators, shard by shard: done shards are kept on disk, each rank takes its share -----
    plan = ShardPlan(tuple(config.ks), config.seed, config.laplace, config.laplace_k, config.batch_size)
    checkpoint_sha256 = sha256_file(checkpoint_path)
    selection = Selection(images, torch.zeros(0), train_config.dataset, config.split, "")
    inputs = common.Inputs(model, train_config, checkpoint_path, checkpoint_sha256, selection, x, mode, config.seed)
    settings = {"split": config.split, **dataclasses.asdict(plan)}
    merged, store = common.run_pass(
        args,
        inputs,
        distributed,
        out_dir,
        EVAL_VERB,
        settings,
        lambda model, part, first: evaluate_shard(model, part, first, plan, device),
        description=f"evaluate (L_{max(config.ks)}{', Laplace' if config.laplace else ''})",
    )
    if merged is None:
        return 0
    found = estimates(merged, config.ks)
    active, variances = active_units(model, x, ACTIVE_THRESHOLD)
    laplace = found.get("laplace")
    laplace_is = found.get("laplace_is")
    unconverged = int(merged["unconverged"]) if laplace is not None else 0
    indefinite = int(merged["indefinite"]) if laplace is not None else 0

    # --- report ----------------------------------------------------------------------------------
    rows = [(f"L_{k}" + (" (ELBO)" if k == 1 else ""), found[f"L_{k}"]) for k in config.ks]
    kl_how = (
        "analytic"
        if model.analytic_kl(model.posterior(x[:1].to(device))) is not None
        else f"mean of {max(config.ks)} draws"
    )
    rows.append((f"ELBO, KL {'analytic' if kl_how == 'analytic' else 'sampled'}", found["elbo"]))
    if laplace is not None and laplace_is is not None:
        rows.append(("Laplace", laplace))
        rows.append((f"Laplace-IS, k={config.laplace_k}", laplace_is))
    # bits per dimension: -log2 p(x) / P, for a normalised pmf over the pixels' values (8-bit or binary)
    dims = model.spec.input_dim
    normalised = model.likelihood.discrete_8bit or (model.likelihood.kind == "bernoulli" and mode != "none")
    print(f"\n{'estimate of log p(x)':<24}{'nats/image':>12}{'stderr':>9}{'bits/dim':>10}{'seconds':>10}")
    for name, estimate in rows:
        bits = f"{bits_per_dim(-estimate.mean, dims):>10.4f}" if normalised else f"{'-':>10}"
        print(f"{name:<24}{estimate.mean:>12.3f}{estimate.stderr:>9.3f}{bits}{estimate.seconds:>10.1f}")
    print(
        f"\n-ELBO = reconstruction {found['reconstruction'].mean:.3f} + KL {found['kl'].mean:.3f} nats/image "
        f"(reconstruction averaged over the {max(config.ks)} draws; KL {kl_how})"
    )
    print(f"active units: {active} of {model.latent_dim} (Cov_x E_q[z_u] > {ACTIVE_THRESHOLD})")
    if laplace is not None:
        print(
            f"Laplace: Newton stopped short of a smooth maximum (a ReLU ridge) for {unconverged} of "
            f"{x.shape[0]} images; "
            f"-H was not positive definite (replaced by |-H|) for {indefinite}; "
            "Laplace-IS time excludes the shared mode search"
        )
    print(
        "L_k for every k reuses the first k samples of one draw of max(k); L_k's seconds count the encoder and "
        "those k samples only"
        + (f"; {distributed.world_size} processes, seconds summed over them" if distributed.world_size > 1 else "")
    )

    result = {
        "checkpoint": str(checkpoint_path),
        "checkpoint_sha256": checkpoint_sha256,
        "images_sha256": inputs.images_sha256,
        "dataset": train_config.dataset,
        "split": config.split,
        "images": x.shape[0],
        "binarization": mode,
        "binarization_seed": config.seed if mode == "dynamic" else None,
        "seed": config.seed,
        "units": "nats per image; mean over images, stderr = std over images / sqrt(n)",
        "dims": dims,
        "bits_per_dim": (
            {
                **{f"L_{k}": bits_per_dim(-found[f"L_{k}"].mean, dims) for k in config.ks},
                **({} if laplace is None else {"laplace": bits_per_dim(-laplace.mean, dims)}),
                **({} if laplace_is is None else {"laplace_is": bits_per_dim(-laplace_is.mean, dims)}),
            }
            if normalised
            else None
        ),
        "iwae": [{"k": k, **_plain(found[f"L_{k}"])} for k in config.ks],
        "elbo": _plain(found["elbo"]),
        "reconstruction": _plain(found["reconstruction"]),
        "kl": _plain(found["kl"]),
        "laplace": None
        if laplace is None
        else {
            **_plain(laplace),
            "unconverged": unconverged,
            "indefinite": indefinite,
        },
        "laplace_is": None if laplace_is is None else {"k": config.laplace_k, **_plain(laplace_is)},
        "active_units": active,
        "active_threshold": ACTIVE_THRESHOLD,
        "active_unit_variances": variances.tolist(),
        "config": to_dict(config),
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    path = _write_json_atomic(out_dir, result)
    store.remove()  # the shards are in eval.json now
    print(f"wrote {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Evaluate under torchrun or alone; every rank exits cleanly, also on an error."""
    import torch.distributed as dist

    from vaelab.distributed import setup_distributed

    distributed, device = setup_distributed(args.device)
    try:
        return _evaluate(args, distributed, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _plain(estimate: Any) -> dict[str, float | None]:
    """An Estimate as JSON-ready numbers; a non-finite value (stderr of one image) becomes null."""
    return {key: value if math.isfinite(value) else None for key, value in dataclasses.asdict(estimate).items()}


def _write_json_atomic(out_dir: Path, result: dict[str, Any]) -> Path:
    """Write out_dir/eval.json atomically: a crash leaves the old file or the new one."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VaelabError(f"cannot create {out_dir}: {error.strerror}; choose a writable --out") from None
    return atomic_write(out_dir / EVAL_NAME, json.dumps(result, indent=2) + "\n", what="evaluation")
