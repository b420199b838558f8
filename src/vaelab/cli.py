"""The `vaelab` command: the only module that reads sys.argv, prints tables and writes run files.

    vaelab train    [--dataset mnist] [--epochs 10] ... [--out DIR] [--resume]
    vaelab evaluate --checkpoint RUN [--k 1 10 100 1000 5000]
    vaelab sample   --checkpoint RUN [--n 64] --out FILE.png
    vaelab data     fetch|info
    vaelab laplace  factorial|integral ...
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from vaelab import evaluate_cli, laplace_cli
from vaelab.errors import VaelabError

RUN_OUTPUTS = ("config.json", "command.txt", "metrics.csv", "checkpoint.pt", "samples.png", "reconstructions.png", "loss.png", "eval.json")


# --------------------------------------------------------------------------------------------
# vaelab train
# --------------------------------------------------------------------------------------------


def _add_train(subparsers: Any) -> None:
    from vaelab.config import BINARIZE_MODES, DATASETS, PRECISIONS, ModelConfig, TrainConfig

    defaults, model = TrainConfig(), ModelConfig()
    parser = subparsers.add_parser(
        "train", help="train a VAE and write its metrics, checkpoint and pictures",
        description="Train the sheet's VAE (the PyTorch VAE example's settings are the defaults) and "
        "write config.json, metrics.csv, checkpoint.pt, samples.png, reconstructions.png and loss.png.",
    )
    # Options default to None so that --resume can tell which ones the user actually gave.
    parser.add_argument("--dataset", choices=DATASETS, default=None, help=f"data set; idx = your own IDX files in --data-dir, checked for structure only (default: {defaults.dataset})")
    parser.add_argument("--data-dir", default=None, help="directory of IDX files (raw or .gz, or torchvision's MNIST/raw layout); default: the cache, fetched when missing")
    parser.add_argument("--epochs", type=int, default=None, help=f"total epochs; with --resume, the new total (default: {defaults.epochs})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"images per optimizer step (default: {defaults.batch_size})")
    parser.add_argument("--latent-dim", type=int, default=None, help=f"dimension of z (default: {model.latent_dim})")
    parser.add_argument("--hidden", type=int, default=None, help=f"hidden units of encoder and decoder (default: {model.hidden})")
    parser.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default: {defaults.lr})")
    parser.add_argument("--seed", type=int, default=None, help=f"seed of every random draw (default: {defaults.seed})")
    parser.add_argument("--binarize", choices=BINARIZE_MODES, default=None, help="pixel targets: none = grey levels as the template, dynamic = a fresh Bernoulli draw each epoch, threshold = x > 0.5 (default: none)")
    parser.add_argument("--train-size", type=int, default=None, help="use only the first N training images; 0 = all (default: 0)")
    parser.add_argument("--test-size", type=int, default=None, help="use only the first N test images; 0 = all (default: 0)")
    parser.add_argument("--device", default=None, help="auto (the accelerator if there is one), cpu, cuda, cuda:N, mps (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads; 0 = torch's default (default: 0)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="fp32, or bf16 for the matrix products (loss, latent code, gradients and Adam stay fp32; default: fp32)")
    parser.add_argument("--detect-anomaly", action="store_true", default=None, help="run autograd's anomaly detection (slow; for finding where a NaN starts)")
    parser.add_argument("--autograd", action="store_true", default=None, help="compute the gradient with autograd instead of the faster one written out by hand (same result to rounding; torchrun and --detect-anomaly always use autograd)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps inside an epoch; 0 = only at epoch ends (default: 0)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<timestamp>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint up to --epochs in total")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an existing run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (per-epoch lines are still printed)")
    parser.set_defaults(func=_run_train)


def _train_config(args: argparse.Namespace, base: Any = None) -> Any:
    """Build the TrainConfig from the options given, on top of `base` (a resumed run's config)."""
    import dataclasses

    from vaelab.config import ModelConfig, TrainConfig

    base = base or TrainConfig()
    given = lambda name: getattr(args, name) is not None  # noqa: E731
    fields = {
        name: getattr(args, name)
        for name in ("dataset", "data_dir", "epochs", "batch_size", "lr", "seed", "binarize", "train_size",
                     "test_size", "device", "threads", "precision", "detect_anomaly", "autograd", "checkpoint_every")
        if given(name)
    }
    model_fields = {name: getattr(args, name) for name in ("latent_dim", "hidden") if given(name)}
    model = dataclasses.replace(base.model, **model_fields) if model_fields else base.model
    if not isinstance(model, ModelConfig):
        raise VaelabError("internal: bad model config")
    return dataclasses.replace(base, model=model, **fields)


def _run_train(args: argparse.Namespace) -> int:
    import gc
    import traceback

    import torch.distributed as dist

    from vaelab.train import setup_distributed

    distributed, device = setup_distributed(args.device or "auto")
    try:
        return _train_run(args, distributed, device)
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


def _train_run(args: argparse.Namespace, distributed: Any, device: Any) -> int:
    import dataclasses

    import torch.distributed as dist

    from vaelab import checkpoint, data
    from vaelab.config import TrainConfig, from_dict, save_json
    from vaelab.train import check_inputs, train

    out = Path(args.out) if args.out else None
    resume_state = None

    # --- decide the run directory and config: rank 0 checks, every rank takes its answer -------
    def decide() -> tuple[str, dict[str, Any]]:
        nonlocal resume_state
        if args.resume:
            if out is None:
                raise VaelabError("--resume needs --out DIR, the run to continue")
            resume_state = checkpoint.load(out)
            base = from_dict(TrainConfig, resume_state["config"])
            changed = [name for name in ("dataset", "batch_size", "latent_dim", "hidden", "lr", "seed", "binarize", "train_size", "test_size")
                       if getattr(args, name) is not None and getattr(args, name) != _lookup(base, name)]
            if changed:
                raise VaelabError(f"--resume continues the saved run; these options differ from it: {', '.join('--' + c.replace('_', '-') for c in changed)}; drop them or start a new --out")
            missing = [key for key in ("optimizer", "epoch", "step", "generator", "epoch_generator", "running", "rng", "history") if key not in resume_state]
            if missing:
                raise VaelabError(f"{out}: the checkpoint lacks {', '.join(missing)}, so it cannot be resumed; start a new --out")
            config = _train_config(args, base)
            done = resume_state["epoch"]
            if config.epochs <= done:
                raise VaelabError(f"{out} has already finished {done} epochs; pass --epochs N with N > {done} to train on")
            run_dir = out
        else:
            config = _train_config(args)
            run_dir = out or Path("runs") / f"{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
            _refuse_existing_run(run_dir, overwrite=args.overwrite)
        return str(run_dir), dataclasses.asdict(config)

    run_dir_name, config_dict = _main_rank_first(decide, distributed, share=True)
    run_dir = Path(run_dir_name)
    config = from_dict(TrainConfig, config_dict)
    if args.resume and resume_state is None:
        resume_state = checkpoint.load(run_dir)

    # --- data: rank 0 fetches into the cache first, the others then read the cache -------------
    dataset = _main_rank_first(lambda: data.load_dataset(config.dataset, config.data_dir), distributed)
    train_x = data.pixels(_first(dataset.train.images, config.train_size))
    test_x = data.pixels(_first(dataset.test.images, config.test_size))
    check_inputs(config, train_x, test_x)

    # --- only now, with every input checked, touch the run directory --------------------------
    if not args.resume:
        def claim() -> None:
            _claim_run_dir(run_dir, overwrite=args.overwrite)
            save_json(config, run_dir / "config.json")
            (run_dir / "command.txt").write_text(shlex.join(["vaelab", *sys.argv[1:]]) + "\n")

        _main_rank_first(claim, distributed, share=True)
    if distributed.is_main:
        print(f"data: {dataset.name} from {dataset.source}: {train_x.shape[0]} training and {test_x.shape[0]} test images")
        print(f"run:  {run_dir}   device: {device}   world size: {distributed.world_size}")

    result = train(config, train_x, test_x, run_dir, resume_state=resume_state, distributed=distributed,
                   device=device, progress=not args.no_progress)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if not distributed.is_main:
        return 0
    if result.stopped == "interrupted":
        print(f"interrupted: checkpoint saved in {run_dir}; continue with: vaelab train --out {shlex.quote(str(run_dir))} --resume")
        return 130
    _write_pictures(result.model, result.history, test_x, run_dir, seed=config.seed)
    last = result.history[-1]
    print(f"done: test -ELBO {last['test_loss']:.2f} nats/image (reconstruction {last['test_rec']:.2f} + KL {last['test_kl']:.2f}) "
          f"after {int(last['epoch'])} epochs; wrote {run_dir}/{{metrics.csv,checkpoint.pt,samples.png,reconstructions.png,loss.png}}")
    return 0


def _lookup(config: Any, name: str) -> Any:
    return getattr(config.model, name) if name in ("latent_dim", "hidden") else getattr(config, name)


def _first(tensor: Any, n: int) -> Any:
    return tensor[:n] if n else tensor


def _refuse_existing_run(run_dir: Path, overwrite: bool) -> list[str]:
    """The run outputs already in run_dir; an error if there are some and --overwrite was not given."""
    existing = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if existing and not overwrite:
        raise VaelabError(f"{run_dir} already holds a run ({', '.join(existing)}); pass --resume to continue it, --overwrite to replace it, or another --out")
    return existing


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


def _main_rank_first(make: Callable[[], Any], distributed: Any, *, share: bool = False) -> Any:
    """Run `make` on rank 0 first; if it fails there, every rank raises the same error.

    Then the other ranks either take rank 0's value (share=True: decisions such as the run
    directory, which must not be made twice) or run `make` themselves (share=False: e.g. reading
    the data set that rank 0 has just put in the cache, too big to broadcast).
    """
    import torch.distributed as dist

    if distributed.world_size == 1:
        return make()
    outcome: list[Any] = [None]
    value = None
    if distributed.is_main:
        try:
            value = make()
            outcome = [("ok", value if share else None)]
        except VaelabError as error:
            outcome = [("error", str(error))]
    dist.broadcast_object_list(outcome, src=0)
    status, shared = outcome[0]
    if status == "error":
        raise VaelabError(shared)
    if distributed.is_main:
        return value
    return shared if share else make()


def _write_pictures(model: Any, history: list[dict[str, float]], test_x: Any, run_dir: Path, seed: int) -> None:
    import torch

    from vaelab.models import reconstruct_means, sample_means
    from vaelab.plots import image_grid, loss_curves, reconstruction_grid

    model = model.cpu().eval()
    generator = torch.Generator().manual_seed(seed)
    samples = sample_means(model, 64, generator).numpy()
    _save(image_grid(samples, 8, title="decoder means for z ~ N(0, I)"), run_dir / "samples.png")
    originals = test_x[:32].cpu()
    _save(reconstruction_grid(originals.numpy(), reconstruct_means(model, originals).numpy()), run_dir / "reconstructions.png")
    _save(loss_curves(history), run_dir / "loss.png")


def _save(figure: Any, path: Path) -> None:
    figure.savefig(path)


# --------------------------------------------------------------------------------------------
# vaelab sample
# --------------------------------------------------------------------------------------------


def _add_sample(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sample", help="draw new images from a trained model",
        description="Draw z ~ N(0, I) and save the decoder means sigmoid(decode(z)) as a grid.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file or the run directory that holds it")
    parser.add_argument("--n", type=int, default=64, help="number of samples")
    parser.add_argument("--columns", type=int, default=8, help="images per row")
    parser.add_argument("--seed", type=int, default=0, help="seed of the z draws")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    import torch

    from vaelab.models import sample_means
    from vaelab.plots import image_grid

    if args.n < 1 or args.columns < 1:
        raise VaelabError(f"--n and --columns must be >= 1 (got {args.n}, {args.columns})")
    model, _ = load_model(args.checkpoint)
    images = sample_means(model, args.n, torch.Generator().manual_seed(args.seed)).numpy()
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise VaelabError(f"--out must name a .png file (got {out})")
    if not out.parent.is_dir():
        raise VaelabError(f"directory {out.parent} does not exist; create it or choose another --out")
    _save(image_grid(images, args.columns, title=f"{args.n} samples, seed {args.seed}"), out)
    print(f"wrote {out}")
    return 0


def load_model(path: str | Path) -> tuple[Any, Any]:
    """A checkpoint (file or run directory) -> (VAE in eval mode on the CPU, its TrainConfig)."""
    from vaelab import checkpoint
    from vaelab.config import TrainConfig, from_dict
    from vaelab.models import VAE

    state = checkpoint.load(path)
    config = from_dict(TrainConfig, state["config"])
    model = VAE(config.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise VaelabError(f"{path}: weights do not fit the saved architecture: {str(error).splitlines()[0]}") from None
    return model.eval(), config


# --------------------------------------------------------------------------------------------
# vaelab data
# --------------------------------------------------------------------------------------------


def _add_data(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="fetch and verify data sets ahead of time, or show the cache",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="{fetch,info}")
    fetch = actions.add_parser("fetch", help="fetch and verify a data set into the cache",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fetch.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist", help="data set")
    fetch.set_defaults(func=_run_data_fetch)
    info = actions.add_parser("info", help="show what is cached, where, and whether it verifies")
    info.set_defaults(func=_run_data_info)


def _run_data_fetch(args: argparse.Namespace) -> int:
    from vaelab import data

    path = data.fetch(args.dataset)
    print(f"{args.dataset}: verified and cached in {path}")
    return 0


def _run_data_info(args: argparse.Namespace) -> int:
    from vaelab import data

    print(f"cache: {data.default_cache_dir()}  (set VAELAB_DATA to move it)")
    print(f"  {'dataset':<14} {'state':<22} {'MB':>6}  directory")
    for entry in data.info():
        state = "verified" if entry["verified"] else (entry["problem"] or "unverified")
        print(f"  {entry['dataset']:<14} {state:<22.22} {entry['bytes'] / 1e6:6.1f}  {entry['dir']}")
        if entry["complete"] and not entry["verified"]:
            print(f"    {entry['problem']}; run `vaelab data fetch --dataset {entry['dataset']}` to rebuild it")
    return 0


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaelab", description="Variational autoencoders and Laplace's method.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,sample,data,laplace}")
    _add_train(subparsers)
    evaluate_cli.add_parser(subparsers)
    _add_sample(subparsers)
    _add_data(subparsers)
    laplace_cli.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a VaelabError is printed as one line and gives exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VaelabError as error:
        print(f"vaelab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vaelab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
