"""`vaelab evaluate`: test log-likelihood in nats (IWAE-k), Laplace evidence, active units -> eval.json.

    vaelab evaluate --checkpoint RUN [--k 1 10 100 1000 5000] [--split test] [--binarize auto]
                    [--size N] [--seed S] [--laplace-k K] [--no-laplace] [--out DIR] [--device auto]

`run` prints the table and writes eval.json; a progress bar shows each estimator's time left.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from vaelab.config import BINARIZE_MODES, EvaluateConfig, TrainConfig, to_dict
from vaelab.errors import VaelabError
from vaelab.io import atomic_write

EVAL_NAME = "eval.json"
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
    parser.add_argument(
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
    parser.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)  # overrides the training run's data_dir
    parser.set_defaults(func=run)


def load_split(train_config: TrainConfig, split: str, data_dir: str | None) -> torch.Tensor:
    """The split's uint8 images (N, 28, 28) of the data set the model was trained on."""
    from vaelab import data

    dataset = data.load_dataset(train_config.dataset, data_dir if data_dir is not None else train_config.data_dir)
    return getattr(dataset, split).images


def run(args: argparse.Namespace) -> int:
    """Evaluate the checkpoint; print the table; write eval.json atomically. Returns the exit status."""
    from vaelab import checkpoint, data
    from vaelab.checkpoint import load_model
    from vaelab.distributed import pick_device
    from vaelab.evaluation import (
        active_units,
        importance_weighted_evaluation,
        laplace_evidence,
        laplace_importance_sampling,
    )

    config = EvaluateConfig(
        checkpoint=args.checkpoint,
        ks=tuple(sorted(set(args.k))),
        split=args.split,
        binarize=args.binarize,
        seed=args.seed,
        size=args.size,
        laplace=not args.no_laplace,
        laplace_k=args.laplace_k,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
    )
    checkpoint_path = checkpoint.resolve(config.checkpoint)
    out_dir = Path(args.out) if args.out else checkpoint_path.parent
    model, train_config = load_model(checkpoint_path)
    device = pick_device(config.device)
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
    x = data.pixels(images)
    if x.shape[1] != model.spec.input_dim:
        raise VaelabError(f"the data has {x.shape[1]} pixels per image but the model expects {model.spec.input_dim}")
    mode = train_config.binarize if config.binarize == "auto" else config.binarize
    x = data.binarize(x, mode, torch.Generator().manual_seed(config.seed))
    if mode == "none":
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

    # --- estimators ------------------------------------------------------------------------------
    iwae = importance_weighted_evaluation(
        model,
        x,
        config.ks,
        seed=config.seed,
        batch_size=config.batch_size,
        device=device,
        progress=not args.no_progress,
    )
    active, variances = active_units(model, x, ACTIVE_THRESHOLD)
    laplace = laplace_is = None
    if config.laplace:
        laplace = laplace_evidence(model, x, device=device, progress=not args.no_progress)
        laplace_is = laplace_importance_sampling(
            model,
            x,
            config.laplace_k,
            seed=config.seed,
            z_star=laplace.z_star,
            neg_hessian=laplace.neg_hessian,
            device=device,
        )

    # --- report ----------------------------------------------------------------------------------
    rows = [(f"L_{k}" + (" (ELBO)" if k == 1 else ""), estimate) for k, estimate in iwae.bounds.items()]
    kl_how = (
        "analytic"
        if model.analytic_kl(model.posterior(x[:1].to(device))) is not None
        else f"mean of {max(config.ks)} draws"
    )
    rows.append((f"ELBO, KL {'analytic' if kl_how == 'analytic' else 'sampled'}", iwae.elbo))
    if laplace is not None and laplace_is is not None:
        rows.append(("Laplace", laplace.estimate))
        rows.append((f"Laplace-IS, k={config.laplace_k}", laplace_is))
    print(f"\n{'estimate of log p(x)':<24}{'nats/image':>12}{'stderr':>9}{'seconds':>10}")
    for name, estimate in rows:
        print(f"{name:<24}{estimate.mean:>12.3f}{estimate.stderr:>9.3f}{estimate.seconds:>10.1f}")
    print(
        f"\n-ELBO = reconstruction {iwae.reconstruction.mean:.3f} + KL {iwae.kl.mean:.3f} nats/image "
        f"(reconstruction averaged over the {max(config.ks)} draws; KL {kl_how})"
    )
    print(f"active units: {active} of {model.latent_dim} (Cov_x E_q[z_u] > {ACTIVE_THRESHOLD})")
    if laplace is not None:
        print(
            f"Laplace: Newton stopped short of a smooth maximum (a ReLU ridge) for {laplace.unconverged} of "
            f"{x.shape[0]} images; "
            f"-H was not positive definite (replaced by |-H|) for {laplace.indefinite}; "
            "Laplace-IS time excludes the shared mode search"
        )
    print(
        "L_k for every k reuses the first k samples of one draw of max(k); L_k's seconds count the encoder and "
        "those k samples only"
    )

    result = {
        "checkpoint": str(checkpoint_path),
        "checkpoint_sha256": _sha256(checkpoint_path),
        "dataset": train_config.dataset,
        "split": config.split,
        "images": x.shape[0],
        "binarization": mode,
        "binarization_seed": config.seed if mode == "dynamic" else None,
        "seed": config.seed,
        "units": "nats per image; mean over images, stderr = std over images / sqrt(n)",
        "iwae": [{"k": k, **_plain(estimate)} for k, estimate in iwae.bounds.items()],
        "elbo": _plain(iwae.elbo),
        "reconstruction": _plain(iwae.reconstruction),
        "kl": _plain(iwae.kl),
        "laplace": None
        if laplace is None
        else {
            **_plain(laplace.estimate),
            "unconverged": laplace.unconverged,
            "indefinite": laplace.indefinite,
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
    print(f"wrote {path}")
    return 0


def _plain(estimate: Any) -> dict[str, float | None]:
    """An Estimate as JSON-ready numbers; a non-finite value (stderr of one image) becomes null."""
    return {key: value if math.isfinite(value) else None for key, value in dataclasses.asdict(estimate).items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(out_dir: Path, result: dict[str, Any]) -> Path:
    """Write out_dir/eval.json atomically: a crash leaves the old file or the new one."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VaelabError(f"cannot create {out_dir}: {error.strerror}; choose a writable --out") from None
    return atomic_write(out_dir / EVAL_NAME, json.dumps(result, indent=2) + "\n", what="evaluation")
