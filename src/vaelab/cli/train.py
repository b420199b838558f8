"""`vaelab train`: build the run's config from the options, train, write the run directory.

The run directory holds config.json (the model spec, the objective spec and every setting;
`--config RUN/config.json` replays it), command.txt, metrics.csv, checkpoint.pt, the pictures
(those of `vaelab plot` among them), epoch_samples.npz (the same latent draws decoded after every
epoch, kept across --resume) and, with --tensorboard, TensorBoard's event files in tensorboard/.
While a training writes it, the directory is locked (.lock, vaelab.io.RunLock): a second training, a
--resume or an --overwrite into it is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from vaelab.config import (
    ACTIVATION_NAMES,
    BINARIZE_MODES,
    LR_SCHEDULES,
    DATASETS,
    LIKELIHOODS,
    NETWORKS,
    OBJECTIVES,
    PRECISIONS,
    DENORMALS,
    PRIORS,
    ModelSpec,
    ObjectiveSpec,
    TrainConfig,
)
from vaelab.errors import VaelabError
from vaelab.presets import PRESETS
from vaelab.training.schedule import parse_duration

RUN_OUTPUTS = (
    "config.json",
    "command.txt",
    "metrics.csv",
    "checkpoint.pt",
    "samples.png",
    "reconstructions.png",
    "loss.png",
    "eval.json",
    "manifold.png",
    "latent_scatter.png",
    "interpolations.png",
    "draws.png",
    "training_strip.png",
    "epoch_samples.npz",
)
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_MISSING = '--tensorboard needs the tensorboard package: pip install "vaelab[tensorboard]"'
SCATTER_SIZE = 2000  # test images encoded for the scatter and the principal plane at the end of a run
# Settings a resumed run must keep (its data, its model and its objective are what the checkpoint holds).
FIXED_ON_RESUME = (
    "dataset",
    "batch_size",
    "lr",
    "seed",
    "binarize",
    "train_size",
    "test_size",
    "validation_size",
    "image_size",
    "test_fraction",
    "model",
    "objective",
    "budget",
    "budget_plan",
    "lr_warmup",
    "warmup_fraction",
)
BUDGET_EPOCHS = 1_000_000  # a --budget run's epochs when none are given: the budget ends it, not a count
RUN_FIELDS = (
    "dataset",
    "data_dir",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "binarize",
    "train_size",
    "test_size",
    "device",
    "threads",
    "precision",
    "denormals",
    "detect_anomaly",
    "autograd",
    "checkpoint_every",
    "compile",
    "validation_size",
    "patience",
    "lr_schedule",
    "lr_final",
    "max_seconds",
    "image_size",
    "test_fraction",
    "budget",
    "lr_warmup",
    "warmup_fraction",
)
MODEL_FIELDS = (
    "input_dim",
    "depth",
    "activation",
    "prior",
    "pseudo_inputs",
    "likelihood",
    "likelihood_std",
    "network",
    "channels",
    "mixture_components",
)
OBJECTIVE_FIELDS = {"objective": "name", "k": "k", "beta": "beta", "warmup_epochs": "warmup_epochs"}


def add_parser(subparsers: Any) -> None:
    defaults, model, objective = TrainConfig(), ModelSpec(), ObjectiveSpec()
    parser = subparsers.add_parser(
        "train",
        help="train a VAE and write its metrics, checkpoint and pictures",
        description="Train a VAE (the PyTorch VAE example's MLP and settings are the defaults) and write config.json, "
        "metrics.csv, checkpoint.pt, samples.png, reconstructions.png and loss.png into the run directory.",
    )
    # Options default to None so that --resume and --config can tell which ones the user actually gave.
    run = parser.add_argument_group("run")
    run.add_argument(
        "--config",
        default=None,
        metavar="RUN/config.json",
        help="start from a saved run's settings; the options given override them",
    )
    run.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="data set; idx = your own IDX files of any size in --data-dir, checked for structure only; folder = "
        "a directory of PNG/JPEG images (class subfolders become labels; train/ and test/ subfolders the splits); "
        f"array = a .npy/.npz of uint8 (N, H, W[, C]) images (default: {defaults.dataset})",
    )
    run.add_argument(
        "--data-dir",
        default=None,
        help="directory of IDX files (raw or .gz, or torchvision's MNIST/raw layout), of images (--dataset folder), "
        "or the .npy/.npz file (--dataset array); default: the cache, fetched when missing",
    )
    run.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="S",
        help="folder/array/idx: resize the shorter side to S and centre-crop S x S; 0 = as stored, one size for all "
        "(default: 0)",
    )
    run.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        metavar="F",
        help="folder/array without train/ and test/ parts: hold out this seeded fraction for testing (default: 0)",
    )
    run.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"total epochs; with --resume, the new total; refused beside --budget, whose time alone ends a budget "
        f"run (default: {defaults.epochs})",
    )
    run.add_argument(
        "--batch-size", type=int, default=None, help=f"images per optimizer step (default: {defaults.batch_size})"
    )
    run.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default: {defaults.lr})")
    run.add_argument("--seed", type=int, default=None, help=f"seed of every random draw (default: {defaults.seed})")
    run.add_argument(
        "--binarize",
        choices=BINARIZE_MODES,
        default=None,
        help="pixel targets: none = grey levels as the PyTorch example, dynamic = a fresh Bernoulli draw each "
        "epoch, threshold = x > 0.5 (default: none)",
    )
    run.add_argument(
        "--train-size", type=int, default=None, help="use only the first N training images; 0 = all (default: 0)"
    )
    run.add_argument(
        "--test-size", type=int, default=None, help="use only the first N test images; 0 = all (default: 0)"
    )
    run.add_argument(
        "--device",
        default=None,
        help="auto (the accelerator if there is one), cpu, cuda, cuda:N, mps; one this machine lacks is an error "
        "(default: a --config's device, else auto)",
    )
    run.add_argument("--threads", type=int, default=None, help="CPU threads; 0 = torch's default (default: 0)")
    run.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="fp32, or bf16 for the matrix products (loss, latent code, gradients and Adam stay fp32; default: fp32)",
    )
    run.add_argument(
        "--denormals",
        choices=DENORMALS,
        default=None,
        help="CPU: flush subnormal floats to zero, 2-3x faster steps once a model has trained a while (bench/"
        "denormals.py), or keep them, IEEE-exact (default: flush)",
    )
    run.add_argument(
        "--detect-anomaly",
        action="store_true",
        default=None,
        help="run autograd's anomaly detection (slow; for finding where a NaN starts)",
    )
    run.add_argument(
        "--autograd",
        action="store_true",
        default=None,
        help="compute the gradient with autograd even where a faster kernel serves the run (the reference path; "
        "same result to rounding)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="also checkpoint every N steps inside an epoch; 0 = only at epoch ends (default: 0)",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the objective where autograd trains the run: 1.1-1.4x per step after 4-20 s of "
        "compiling, so for long runs (bench/README.md)",
    )
    run.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help=f"start from a named configuration (docs/likelihood.md): {', '.join(PRESETS)}; the options given "
        "override its fields",
    )
    run.add_argument(
        "--validation-size",
        type=int,
        default=None,
        help="hold out the last N training images: validation -ELBO each epoch, best.pt kept beside the last "
        "(default: 0)",
    )
    run.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after N epochs without a better validation -ELBO (default: 0, never)",
    )
    run.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=None,
        help="constant, or cosine from --lr to --lr-final over --epochs",
    )
    run.add_argument(
        "--lr-final", type=float, default=None, help="the cosine schedule's last learning rate (default: 0)"
    )
    run.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop after the epoch in which training time passes S seconds (default: 0, no limit)",
    )
    run.add_argument(
        "--budget",
        type=str,
        default=None,
        metavar="TIME",
        help="train for this much wall-clock time (90s, 30m, 2h): the learning-rate and warm-up schedules run over "
        "it, the run stops where it ends, and config.json records the steps taken, so --config RUN/config.json "
        "replays them exactly; without --preset or --config, the preset measured best for that budget; --epochs is "
        "refused beside it",
    )
    run.add_argument(
        "--lr-warmup",
        type=float,
        default=None,
        metavar="F",
        help="the learning rate rises linearly from 0 over this fraction of the run (default: 0)",
    )
    run.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<timestamp>)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint up to --epochs in total",
    )
    run.add_argument("--overwrite", action="store_true", help="replace the outputs of an existing run in --out")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (per-epoch lines are still printed)")
    run.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log each epoch's metrics and samples to RUN/tensorboard (metrics.csv stays the record)",
    )

    spec = parser.add_argument_group("model (docs/models.md)")
    spec.add_argument(
        "--layers",
        type=int,
        choices=(1, 2),
        default=None,
        help="stochastic layers: 1, or 2 as Burda et al.'s q(z1|x) q(z2|z1) (default: 1)",
    )
    spec.add_argument(
        "--latent-dim",
        type=int,
        nargs="+",
        default=None,
        metavar="D",
        help="latent size per stochastic layer, the one next to x first; one value serves every layer (default: "
        f"{model.latent_dims[0]})",
    )
    spec.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=None,
        metavar="H",
        help=f"MLP width per stochastic layer; one value serves every layer (default: {model.hidden[0]})",
    )
    spec.add_argument(
        "--network",
        choices=NETWORKS,
        default=None,
        help="the networks next to the image: mlp, conv (strided 3x3 convolutions), or resnet (residual cells at each "
        "resolution); the z1-z2 networks of two layers stay MLPs (default: mlp)",
    )
    spec.add_argument(
        "--channels",
        type=int,
        default=None,
        help=f"conv/resnet: channels after the first halving, doubled at each next one (default: {model.channels})",
    )
    spec.add_argument(
        "--depth",
        type=int,
        default=None,
        help=f"hidden layers in every MLP; conv/resnet: blocks per resolution (default: {model.depth})",
    )
    spec.add_argument(
        "--activation", choices=ACTIVATION_NAMES, default=None, help=f"hidden activation (default: {model.activation})"
    )
    spec.add_argument(
        "--prior",
        choices=PRIORS,
        default=None,
        help="p(z): normal = N(0, I), vamp = VampPrior with --pseudo-inputs learned pseudo-inputs (default: normal)",
    )
    spec.add_argument(
        "--pseudo-inputs", type=int, default=None, help=f"the VampPrior's K (default: {model.pseudo_inputs})"
    )
    spec.add_argument(
        "--likelihood",
        choices=LIKELIHOODS,
        default=None,
        help="p(x|z): bernoulli (binary or grey-level targets), gaussian with a fixed std, or for 8-bit pixels the "
        "discretized logistic (logistic) or its mixture (logistic-mixture, PixelCNN++), reported in bits/dim too "
        "(default: bernoulli)",
    )
    spec.add_argument(
        "--mixture-components",
        type=int,
        default=None,
        help=f"logistic-mixture: logistics per pixel (default: {model.mixture_components})",
    )

    goal = parser.add_argument_group("objective (docs/derivations.md)")
    goal.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=None,
        help="elbo; beta (KL weighted by --beta); iwae (L_k); dreg (L_k with the doubly reparameterized gradient) "
        "(default: elbo)",
    )
    goal.add_argument(
        "--k", type=int, default=None, help=f"samples per image for iwae and dreg (default: {objective.k})"
    )
    goal.add_argument("--beta", type=float, default=None, help="the KL weight of --objective beta (default: 1)")
    goal.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help="KL warm-up: the KL weight rises linearly from 0 over this many epochs (elbo, beta; default: 0)",
    )
    goal.add_argument(
        "--warmup-fraction",
        type=float,
        default=None,
        metavar="F",
        help="KL warm-up over this fraction of the run instead (of its --budget, or its --epochs; default: 0)",
    )
    parser.set_defaults(func=run_command)


def train_config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The TrainConfig the options describe, on top of `base` (a saved run's config, or the defaults)."""
    base = base or TrainConfig()
    given = {name: value for name, value in vars(args).items() if value is not None}
    if "budget" in given:
        given["budget"] = parse_duration(given["budget"])
    run_fields = {name: given[name] for name in RUN_FIELDS if name in given}
    model_fields = {name: given[name] for name in MODEL_FIELDS if name in given}
    layers = given.get("layers", len(given.get("latent_dim", ())) or base.model.layers)
    for option, field in (("latent_dim", "latent_dims"), ("hidden", "hidden")):
        values = tuple(given.get(option, getattr(base.model, field)))
        if len(values) == 1 and layers > 1:
            values = values * layers  # one value serves every layer
        if len(values) != layers:
            raise VaelabError(
                f"--{option.replace('_', '-')} needs one value per stochastic layer ({layers}), or one for all (got "
                f"{list(values)})"
            )
        model_fields[field] = values
    objective_fields = {field: given[option] for option, field in OBJECTIVE_FIELDS.items() if option in given}
    if "epochs" in given and (given.get("budget") or base.budget):
        # Whichever ended first would silently cut the other short: a budget run is ended by its time alone.
        origin = "--config's" if given.get("config") else "--preset's" if given.get("preset") else "the resumed run's"
        budget = "--budget" if "budget" in given else f"{origin} budget of {base.budget:g} s"
        other = "drop --budget to train for the epochs" if "budget" in given else "start from settings without a budget"
        raise VaelabError(
            f"--epochs {given['epochs']} and {budget} both end the run, and the first to come would cut the other "
            f"short; drop --epochs to train for the budget, or {other}"
        )
    if "budget" in given:  # a budget given here is a fresh budget run: a saved plan is not replayed
        run_fields["budget_plan"] = ()
        run_fields.setdefault("epochs", BUDGET_EPOCHS)
    model = dataclasses.replace(base.model, **model_fields)
    objective = dataclasses.replace(base.objective, **objective_fields)
    return dataclasses.replace(base, model=model, objective=objective, **run_fields)


def _changed_options(config: TrainConfig, base: TrainConfig) -> list[str]:
    """The command-line options whose values make `config` a different run from `base` (see FIXED_ON_RESUME)."""
    names = {"latent_dims": "latent-dim", "name": "objective"}
    changed = []
    for name in FIXED_ON_RESUME:
        new, old = getattr(config, name), getattr(base, name)
        if name in ("model", "objective"):
            changed += [
                f"--{names.get(f.name, f.name).replace('_', '-')}"
                for f in dataclasses.fields(new)
                if getattr(new, f.name) != getattr(old, f.name)
            ]
        elif new != old:
            changed.append(f"--{name.replace('_', '-')}")
    return changed


def _device_name(args: argparse.Namespace) -> str:
    """--device, else the device of the --config that starts a new run, else auto (a resumed run may move)."""
    from vaelab.config import load_json

    if args.device is not None:
        return args.device
    if args.config and not args.resume:
        return load_json(TrainConfig, args.config).device
    return "auto"


def run_command(args: argparse.Namespace) -> int:
    import gc
    import traceback

    import torch.distributed as dist

    from vaelab.distributed import setup_distributed

    # The device is set up before the config is decided (a torchrun group needs it), so a --config's device is read
    # here; the name used is the run's, and a device this machine lacks is an error, never a quiet CPU run.
    args = argparse.Namespace(**{**vars(args), "device": _device_name(args)})
    distributed, device = setup_distributed(args.device)
    try:
        with contextlib.ExitStack() as held:  # the run directory's lock, taken inside and released on any exit
            return _train_run(args, distributed, device, held)
    except BaseException as error:
        if dist.is_initialized():
            # The traceback holds train()'s frame and so the DDP wrapper, which keeps the process
            # group alive past destroy_process_group; gloo then aborts at exit ("terminate called
            # without an active exception"). Let them go while the group can still be torn down.
            traceback.clear_frames(error.__traceback__)
            gc.collect()
        raise
    finally:
        # Also on an error, so that every rank of a torchrun job exits cleanly instead of aborting.
        if dist.is_initialized():
            dist.destroy_process_group()


def _decide(args: argparse.Namespace) -> tuple[Path, TrainConfig, dict[str, Any] | None]:
    """The run directory, its config, and (with --resume) the checkpoint to continue."""
    from vaelab import checkpoint
    from vaelab.config import from_dict, load_json
    from vaelab.presets import preset_config, preset_for_budget

    out = Path(args.out) if args.out else None
    if args.resume:
        if out is None:
            raise VaelabError("--resume needs --out DIR, the run to continue")
        if args.config or args.preset:
            raise VaelabError(
                f"--{'config' if args.config else 'preset'} starts a new run from saved settings and --resume "
                "continues one; give one of them"
            )
        saved = checkpoint.load(out)
        base = from_dict(TrainConfig, saved["config"])
        config = train_config(args, base)
        changed = _changed_options(config, base)
        if changed:
            raise VaelabError(
                f"--resume continues the saved run; these options differ from it: {', '.join(changed)}; drop them or "
                "start a new --out"
            )
        missing = [
            key
            for key in ("optimizer", "epoch", "step", "generator", "epoch_generator", "running", "rng", "history")
            if key not in saved
        ]
        if missing:
            raise VaelabError(
                f"{out}: the checkpoint lacks {', '.join(missing)}, so it cannot be resumed; start a new --out"
            )
        if config.epochs <= saved["epoch"]:
            raise VaelabError(
                f"{out} has already finished {saved['epoch']} epochs; pass --epochs N with N > {saved['epoch']} to "
                "train on"
            )
        return out, config, saved
    if args.config and args.preset:
        raise VaelabError("--config and --preset both give a starting configuration; give one of them")
    if args.config:
        base = load_json(TrainConfig, args.config)
    elif args.preset or args.budget:
        base = preset_config(args.preset or preset_for_budget(parse_duration(args.budget)))
    else:
        base = None
    config = train_config(args, base)
    run_dir = out or Path("runs") / f"{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    _refuse_existing_run(run_dir, overwrite=args.overwrite)
    return run_dir, config, None


def _train_run(args: argparse.Namespace, distributed: Any, device: Any, held: contextlib.ExitStack) -> int:
    """Train the run `args` describe; rank 0 locks its directory into `held` before it reads or writes it."""
    import torch.distributed as dist

    from vaelab import checkpoint, data
    from vaelab.config import from_dict, save_json, to_dict
    from vaelab.distributed import main_rank_first
    from vaelab.io import atomic_write
    from vaelab.kernels import Runtime, training_path
    from vaelab.training import train
    from vaelab.training.guards import check_inputs

    if args.tensorboard:
        _require_tensorboard()

    # --- decide the run directory and config: rank 0 checks, every rank takes its answer -------
    def decide() -> tuple[str, dict[str, Any]]:
        run_dir, config, _ = _decide(args)
        return str(run_dir), to_dict(config)

    run_dir_name, config_dict = main_rank_first(decide, distributed, share_value=True)
    run_dir = Path(run_dir_name)
    config = from_dict(TrainConfig, config_dict)
    if args.resume:  # locked before the checkpoint is read, so that no other writer moves it under this run
        main_rank_first(lambda: _lock_run_dir(run_dir, held), distributed, share_value=True)
    resume_state = checkpoint.load(run_dir) if args.resume else None

    # --- data: rank 0 fetches (or converts) into the cache first, the others then read the cache --
    dataset = main_rank_first(
        lambda: data.load_run_dataset(config, progress=distributed.is_main and not args.no_progress),
        distributed,
    )
    config = _fit_to_data(config, dataset, resuming=args.resume)
    # uint8 images as stored (the cache is memory-mapped); the loop scales each batch to [0, 1]
    train_x = _first(dataset.train.images, config.train_size)
    test_x = _first(dataset.test.images, config.test_size)
    check_inputs(config, train_x, test_x)

    # --- only now, with every input checked, touch the run directory --------------------------
    if not args.resume:

        def claim() -> None:
            _lock_run_dir(run_dir, held)  # first: two trainings, or --overwrite, never interleave their files
            _claim_run_dir(run_dir, overwrite=args.overwrite)
            save_json(config, run_dir / "config.json")
            atomic_write(run_dir / "command.txt", shlex.join(["vaelab", *sys.argv[1:]]) + "\n", what="command record")

        main_rank_first(claim, distributed, share_value=True)
    if distributed.is_main:
        runtime = Runtime(distributed.world_size, config.autograd, config.detect_anomaly, config.precision, device.type)
        print(
            f"data: {dataset.name} from {dataset.source}: {train_x.shape[0]} training and {test_x.shape[0]} test images"
        )
        print(f"run:  {run_dir}   device: {device}   world size: {distributed.world_size}")
        print(f"{training_path(config.model, config.objective, runtime)}")
        if config.budget and not config.budget_plan:
            chosen = "" if args.preset or args.config or args.resume else ", the preset measured best for it"
            preset = f" with preset {config.preset}{chosen}" if config.preset else ""
            print(f"budget: {config.budget:g} s of training{preset}")

    recorder = _EpochRecorder(run_dir, config.seed, tensorboard=args.tensorboard) if distributed.is_main else None
    try:
        result = train(
            config,
            train_x,
            test_x,
            run_dir,
            resume_state=resume_state,
            distributed=distributed,
            device=device,
            progress=not args.no_progress,
            on_epoch=recorder,
        )
    finally:
        if recorder is not None:
            recorder.close()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if not distributed.is_main:
        return 0
    if result.stopped == "interrupted":
        print(
            f"interrupted: checkpoint saved in {run_dir}; continue with: vaelab train --out "
            f"{shlex.quote(str(run_dir))} --resume"
        )
        return 130
    if config.budget and not config.budget_plan and result.budget_plan:
        # the plan the clock made, recorded so that --config RUN/config.json replays these steps exactly
        config = dataclasses.replace(config, budget_plan=tuple(result.budget_plan))
        save_json(config, run_dir / "config.json")
        print(
            f"budget: {result.budget_plan[-1][1]} steps planned in {len(result.budget_plan)} re-plans, "
            f"{sum(row['seconds'] for row in result.history):.1f} s of training; config.json records the plan"
        )
    test_labels = _first(dataset.test.labels, config.test_size)
    written = _write_pictures(
        result.model, result.history, data.pixels(test_x[:SCATTER_SIZE]), run_dir, config, labels=test_labels
    )
    last = result.history[-1]
    if result.stopped in ("early", "budget"):
        if result.stopped == "early":
            why = f"no better validation -ELBO for {config.patience} epochs"
        elif config.budget:
            why = f"the --budget of {config.budget:g} s was spent"
        else:
            why = f"the --max-seconds {config.max_seconds:g} budget was spent"
        of = "" if config.budget else f" of {config.epochs}"
        print(
            f"stopped after epoch {int(last['epoch'])}{of}: {why}; best.pt holds the best on validation"
            if config.validation_size
            else f"stopped after epoch {int(last['epoch'])}{of}: {why}"
        )
    print(
        f"done: test -ELBO {last['test_loss']:.2f} nats/image (reconstruction {last['test_rec']:.2f} + KL "
        f"{last['test_kl']:.2f}) "
        f"after {int(last['epoch'])} epochs; wrote "
        f"{run_dir}/{{metrics.csv,checkpoint.pt,{','.join(written)}}}"
    )
    return 0


def _fit_to_data(config: TrainConfig, dataset: Any, resuming: bool) -> TrainConfig:
    """The config with the model shaped for the data (C, H, W) and the data's digests recorded.

    A new run takes the images' shape where it differs from the spec's; a resumed run must meet
    the data it was trained on, byte for byte where it recorded the digest.
    """
    shape = tuple(dataset.image_shape)
    digests = {"data_digest": dataset.cache_digest, "source_digest": dataset.source_digest}
    if resuming:
        if config.data_digest and digests["data_digest"] and config.data_digest != digests["data_digest"]:
            raise VaelabError(
                f"the data differs from the run's: cache digest {digests['data_digest'][:12]}... against the recorded "
                f"{config.data_digest[:12]}...; resume with the same images, or start a new --out"
            )
        return config
    model = config.model
    if model.shape != shape:
        model = dataclasses.replace(model, image_shape=shape, input_dim=math.prod(shape))
    return dataclasses.replace(config, model=model, **{k: v for k, v in digests.items() if v})


def _first(tensor: Any, n: int) -> Any:
    return tensor[:n] if n else tensor


def _refuse_existing_run(run_dir: Path, overwrite: bool) -> list[str]:
    """The run outputs already in run_dir; an error if there are some and --overwrite was not given."""
    existing = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if existing and not overwrite:
        raise VaelabError(
            f"{run_dir} already holds a run ({', '.join(existing)}); pass --resume to continue it, --overwrite to "
            "replace it, or another --out"
        )
    return existing


def _lock_run_dir(run_dir: Path, held: contextlib.ExitStack) -> None:
    """Lock the run directory (rank 0) until `held` closes; a run that another process writes is an error."""
    from vaelab.io import RunLock

    held.enter_context(RunLock(run_dir, what="vaelab train"))


def _claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run directory; an existing run is never touched unless --overwrite says so."""
    existing = _refuse_existing_run(run_dir, overwrite)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise VaelabError(f"cannot write to {run_dir}: {error.strerror}; choose a writable --out") from None
    for name in existing:
        (run_dir / name).unlink()
    if overwrite:  # the replaced run's TensorBoard events would mix with the new run's
        for events in (run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"):
            events.unlink()


def _write_pictures(
    model: Any, history: list[dict[str, float]], test_x: Any, run_dir: Path, config: TrainConfig, labels: Any
) -> list[str]:
    """The finished run's pictures: samples, reconstructions and loss curves, then `vaelab plot`'s figures
    from the first SCATTER_SIZE test images, drawn in the model's image shape (C, H, W); inputs that are not an
    image get the loss curves and the latent scatter only, and a note saying so. Returns the names written."""
    import torch

    from vaelab import data
    from vaelab.models import reconstruct_means, sample_means
    from vaelab.plots import NOT_AN_IMAGE, image_grid, loss_curves, reconstruction_grid, write_figures
    from vaelab.visualize import EPOCH_SAMPLES_NAME, pictures, read_epoch_samples

    model = model.cpu().eval()
    shape = model.spec.shape  # (C, H, W), or None for a flat vector that is not an image
    names = []
    if shape is not None:
        generator = torch.Generator().manual_seed(config.seed)
        samples = sample_means(model, 64, generator).numpy()
        image_grid(samples, 8, title="decoder means for z ~ p(z)", image_shape=shape).savefig(run_dir / "samples.png")
        originals = test_x[:32].cpu()
        reconstructions = reconstruct_means(model, originals).numpy()
        reconstruction_grid(originals.numpy(), reconstructions, image_shape=shape).savefig(
            run_dir / "reconstructions.png"
        )
        names = ["samples.png", "reconstructions.png"]
    else:
        print(NOT_AN_IMAGE.format(pixels=model.spec.input_dim))
    loss_curves(history).savefig(run_dir / "loss.png")
    # The model's inputs as in training (a dynamic binarization drawn once, as the loop draws the test set).
    x = data.binarize(test_x[:SCATTER_SIZE].cpu(), config.binarize, torch.Generator().manual_seed(config.seed + 1))
    arrays = pictures(model, x, labels[:SCATTER_SIZE], seed=config.seed)
    strip = read_epoch_samples(run_dir / EPOCH_SAMPLES_NAME)
    figures = write_figures(arrays, run_dir, strip=strip, dataset=config.dataset)
    return [*names, "loss.png", *(path.name for path in figures)]


def _require_tensorboard() -> None:
    """Fail before training, in one line, when --tensorboard cannot write (no tensorboard package)."""
    try:
        import torch.utils.tensorboard  # noqa: F401  (it imports the tensorboard package)
    except ImportError:
        raise VaelabError(TENSORBOARD_MISSING) from None


class _EpochRecorder:
    """The on_epoch hook (rank 0): decode the same STRIP_SAMPLES draws z ~ p(z) (a generator seeded with the
    run's seed, never the global ones) and append them to RUN/epoch_samples.npz; with TensorBoard, also log
    the epoch's metrics (every field of the row but the epoch) and that row of samples (grey "HW" or colour
    "HWC" in the model's image shape; none for inputs that are not an image)."""

    def __init__(self, run_dir: Path, seed: int, tensorboard: bool = False) -> None:
        self.run_dir, self.seed = run_dir, seed
        self.writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR))

    def __call__(self, row: dict[str, float], model: Any) -> None:
        from vaelab.plots import display_images, tile
        from vaelab.visualize import EPOCH_SAMPLES_NAME, STRIP_SAMPLES, append_epoch_samples, fixed_samples, to_uint8

        epoch = int(row["epoch"])
        shape = model.spec.shape  # (C, H, W), or None for a flat vector that is not an image
        images = to_uint8(fixed_samples(model, STRIP_SAMPLES, self.seed))  # (n, P)
        append_epoch_samples(self.run_dir / EPOCH_SAMPLES_NAME, epoch, images, image_shape=shape)
        if self.writer is not None:
            for name, value in row.items():
                if name != "epoch" and math.isfinite(value):  # NaN marks a measure the run does not take
                    self.writer.add_scalar(name, value, epoch)
            if shape is not None:
                strip = tile(display_images(images.numpy(), shape), STRIP_SAMPLES, pad_value=0.5)  # (h, w[, 3])
                self.writer.add_image("samples", strip, epoch, dataformats="HW" if strip.ndim == 2 else "HWC")
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
