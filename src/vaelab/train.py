"""The training loop: one visible loop over epochs and batches; returns the history.

Batches are gathered from float tensors that already live on the device (no per-sample
DataLoader), losses accumulate on the device, and every random draw (shuffling, dynamic
binarization, the reparameterization noise) comes from one seeded generator whose state is
checkpointed, so `--resume` continues bit-for-bit. One process computes the gradient with
`vaelab.backprop` (written out by hand, straight into preallocated gradients); under torchrun
each rank takes its share of every global batch and autograd + DistributedDataParallel average
the gradients, as they do under --detect-anomaly.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from vaelab import backprop, checkpoint
from vaelab.config import TrainConfig, to_dict
from vaelab.errors import VaelabError
from vaelab.evaluate import negative_elbo
from vaelab.models import VAE
from vaelab.objectives import batch_negative_elbo

METRICS_NAME = "metrics.csv"
METRICS_COLUMNS = ("epoch", "train_loss", "test_loss", "test_rec", "test_kl", "seconds", "train_rec", "train_kl")
# How often the host reads the loss to check that it is finite. On the CPU a read costs nothing,
# so every step, before the update; on an accelerator a read waits for the device's queue to
# drain, so every 50 steps and before anything is saved: a non-finite loss then stops the run
# within 50 steps, and what is on disk predates it.
LOSS_READ_EVERY = {"cpu": 1}
LOSS_READ_EVERY_ELSEWHERE = 50


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    """What `train` hands back: the model, one row per finished epoch, and why it stopped."""

    model: VAE
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str = "completed"  # or "interrupted"
    checkpoint_path: Path | None = None


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> the current accelerator (CUDA, MPS, ...) if there is one, else the CPU."""
    if name == "auto":
        if hasattr(torch, "accelerator") and torch.accelerator.is_available():
            accelerator = torch.accelerator.current_accelerator()
            return torch.device(accelerator.type, local_rank) if accelerator.type == "cuda" else accelerator
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VaelabError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VaelabError(f"--device {name} asked for CUDA but none is available; use --device cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup_distributed(device_name: str = "auto") -> tuple[Distributed, torch.device]:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size <= 1:
        return Distributed(), device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank), device


def build_optimizer(model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam as in the template; the fused kernel where the device has one (CPU and CUDA do)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop reads after each step (a second SIGINT aborts)."""

    # torchrun forwards the Ctrl-C that its workers already got from the terminal: a SIGINT this
    # soon after the first is the same key press, not a second one.
    REPEAT_AFTER_S = 1.0

    def __init__(self) -> None:
        self.requested = False
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.requested, self._first_at = True, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self._first_at > self.REPEAT_AFTER_S:
            raise KeyboardInterrupt

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def train(
    config: TrainConfig,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    run_dir: str | Path | None = None,
    *,
    resume_state: dict[str, Any] | None = None,
    distributed: Distributed = Distributed(),
    device: torch.device | None = None,
    progress: bool = True,
) -> TrainResult:
    """Minimise -ELBO (summed over each batch, as the template) with Adam.

    train_x (N, P), test_x (M, P): float pixels in [0, 1]. Writes `metrics.csv` and the
    checkpoint into `run_dir` (rank 0 only) after every epoch; `resume_state` is a loaded
    checkpoint to continue from. Returns the history in nats per image.
    """
    check_inputs(config, train_x, test_x)
    device = device or pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(run_dir) if run_dir is not None else None
    checkpoint_path = run_dir / checkpoint.CHECKPOINT_NAME if run_dir is not None else None
    if run_dir is not None and distributed.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    n_train = train_x.shape[0]

    # --- setup: model, optimizer, generator (from the checkpoint when resuming) ---------------
    torch.manual_seed(config.seed)
    model = VAE(config.model).to(device)
    optimizer = build_optimizer(model, config.lr, device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start_epoch, start_step = 1, 0
    running = torch.zeros(2, dtype=torch.float64, device=device)  # (reconstruction, KL) sums this epoch
    epoch_seconds_so_far = 0.0
    epoch_generator_state = generator.get_state()
    if resume_state is not None:
        try:
            model.load_state_dict(resume_state["model"])
        except RuntimeError as error:
            raise VaelabError(f"the checkpoint holds another architecture than the config describes: {str(error).splitlines()[0]}") from None
        optimizer.load_state_dict(resume_state["optimizer"])
        checkpoint.restore_rng_state(resume_state["rng"])
        history = [dict(row) for row in resume_state["history"]]
        start_epoch, start_step = resume_state["epoch"] + 1, resume_state["step"]
        epoch_generator_state = resume_state["epoch_generator"]
        generator.set_state(resume_state["generator"])
        # A mid-epoch checkpoint holds the sums of all ranks; rank 0 carries them on.
        running = resume_state["running"].to(device) * float(distributed.is_main)
        epoch_seconds_so_far = float(resume_state["epoch_seconds"])
    train_x = train_x.to(device)
    test_x = test_x.to(device)
    if config.binarize == "threshold":
        train_x, test_x = (train_x > 0.5).to(train_x.dtype), (test_x > 0.5).to(test_x.dtype)
    elif config.binarize == "dynamic":
        # The test set gets one fixed draw so that test losses are comparable across epochs.
        test_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
        test_x = torch.bernoulli(test_x, generator=test_generator)
    ddp_model: torch.nn.Module = model
    if distributed.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    steps_per_epoch = math.ceil(n_train / config.batch_size)
    latent_dim = config.model.latent_dim
    compute_dtype = torch.bfloat16 if config.precision == "bf16" else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute_dtype is not None)
    # The hand-written gradient needs no graph; DDP and anomaly detection hook into autograd's.
    by_hand = distributed.world_size == 1 and not (config.autograd or config.detect_anomaly)
    if by_hand:  # the gradients stay in place from step to step, overwritten; Adam reads .grad
        parameters = backprop.parameters(model)
        weights = tuple(parameter.detach() for parameter in parameters)
        for parameter in parameters:
            parameter.grad = torch.zeros_like(parameter)
        grads = tuple(parameter.grad for parameter in parameters)
    anomaly = torch.autograd.detect_anomaly() if config.detect_anomaly else contextlib.nullcontext()
    result = TrainResult(model=model, history=history, checkpoint_path=checkpoint_path)
    read_every = LOSS_READ_EVERY.get(device.type, LOSS_READ_EVERY_ELSEWHERE)

    def check_finite(epoch: int, step: int, indices: torch.Tensor) -> None:
        """Stop every rank if a loss of steps unchecked_from..step was not finite: one read of
        this epoch's running sums, which any NaN or infinity since the epoch began turns non-finite."""
        nonlocal unchecked_from
        total = running.sum().item()
        if _agree(not math.isfinite(total), distributed, device):
            where = f"step {step} (images {indices[:4].tolist()}...)" if unchecked_from == step else f"one of steps {unchecked_from}-{step}"
            raise VaelabError(
                f"non-finite loss ({total if not math.isfinite(total) else 'on another rank'}) at epoch {epoch}, {where}; "
                f"the last good checkpoint, if any, is kept; try a lower --lr or --detect-anomaly to find the operation"
            )
        unchecked_from = step + 1

    def snapshot(epoch_done: int, step: int, seconds: float) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "config": to_dict(config),
            "epoch": epoch_done,
            "step": step,
            "generator": generator.get_state(),
            "epoch_generator": epoch_generator_state,
            "running": running.cpu(),
            "epoch_seconds": seconds,
            "rng": checkpoint.capture_rng_state(),
            "history": history,
        }

    with _StopRequest() as stop, anomaly:
        for epoch in range(start_epoch, config.epochs + 1):
            # --- the epoch's permutation, regenerated from its saved start state on resume ---
            if start_step == 0:
                epoch_generator_state = generator.get_state()
                permutation = torch.randperm(n_train, generator=generator, device=device)
            else:
                resumed_state = generator.get_state()
                generator.set_state(epoch_generator_state)
                permutation = torch.randperm(n_train, generator=generator, device=device)
                generator.set_state(resumed_state)
            model.train()
            unchecked_from = start_step  # the first step of this epoch whose loss has not been read yet
            started = time.perf_counter()
            bar = tqdm(
                range(start_step, steps_per_epoch), initial=start_step, total=steps_per_epoch,
                desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False, mininterval=0.5,
                disable=not (progress and distributed.is_main),
            )
            for step in bar:
                # --- batch: the global batch is drawn identically on every rank; each takes a share
                indices = permutation[step * config.batch_size : (step + 1) * config.batch_size]
                x = train_x.index_select(0, indices)  # (B, P); 5x faster than train_x[indices] on CPU
                eps = torch.randn(x.shape[0], latent_dim, generator=generator, device=device)  # (B, D)
                if config.binarize == "dynamic":
                    x = torch.bernoulli(x, generator=generator)
                if distributed.world_size > 1:
                    x, eps = _share(x, distributed), _share(eps, distributed)
                # --- forward (and, by hand, the gradient) -----------------------------------
                if by_hand:
                    reconstruction, kl = backprop.negative_elbo_gradients(weights, x, eps, grads, compute_dtype)
                else:
                    with autocast:
                        logits, mu, logvar = ddp_model(x, eps)
                    reconstruction, kl = batch_negative_elbo(logits.float(), x, mu.float(), logvar.float())
                # --- log: the sums stay on the device, read for the finite check and the bar --
                running += torch.stack((reconstruction.detach(), kl.detach())).double()
                stopping = _agree(stop.requested, distributed, device)  # finish this step, then stop
                saving_mid_epoch = step + 1 < steps_per_epoch and (
                    stopping or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0)
                )
                if (step + 1) % read_every == 0 or step + 1 == steps_per_epoch or saving_mid_epoch:
                    check_finite(epoch, step, indices)  # every rank stops here, before the update
                # --- backward and step: DDP averages gradients, so scale the local sum back up ---
                if not by_hand:
                    optimizer.zero_grad(set_to_none=True)
                    ((reconstruction + kl) * distributed.world_size).backward()
                optimizer.step()
                if step % 50 == 0 and not bar.disable:
                    seen = min((step + 1) * config.batch_size, n_train)
                    bar.set_postfix(loss=f"{running.sum().item() * distributed.world_size / seen:.2f}")
                # --- interrupted: finish this step, checkpoint, hand back ---------------------
                # (on the epoch's last step the epoch finishes normally and stops after its checkpoint)
                if saving_mid_epoch:
                    seconds = epoch_seconds_so_far + time.perf_counter() - started
                    _save_mid_epoch(snapshot(epoch - 1, step + 1, seconds), running, distributed, checkpoint_path)
                    if stopping:
                        bar.close()
                        result.stopped = "interrupted"
                        return result
            bar.close()
            seconds = epoch_seconds_so_far + time.perf_counter() - started

            # --- epoch metrics: the training sums over all ranks, the test -ELBO on rank 0 -----
            if distributed.world_size > 1:
                dist.all_reduce(running)
            train_rec, train_kl = (running / n_train).tolist()
            test_rec, test_kl = negative_elbo(model, test_x, seed=config.seed, device=device)
            row = {
                "epoch": epoch, "train_loss": train_rec + train_kl, "test_loss": test_rec + test_kl,
                "test_rec": test_rec, "test_kl": test_kl, "seconds": seconds,
                "train_rec": train_rec, "train_kl": train_kl,
            }
            history.append(row)
            running.zero_()
            start_step, epoch_seconds_so_far = 0, 0.0
            if distributed.is_main and run_dir is not None:
                checkpoint.save(snapshot(epoch, 0, 0.0), checkpoint_path)
                write_metrics(history, run_dir / METRICS_NAME)
            if distributed.is_main:  # the per-epoch line, with or without the progress bar
                tqdm.write(
                    f"epoch {epoch:3d}  train {row['train_loss']:8.3f}  test {row['test_loss']:8.3f} "
                    f"(rec {test_rec:8.3f} + KL {test_kl:6.3f}) nats/image  {seconds:6.2f} s"
                )
            if _agree(stop.requested, distributed, device):  # the signal came during the epoch's last step or its end
                result.stopped = "interrupted" if epoch < config.epochs else "completed"
                return result
    return result


def check_inputs(config: TrainConfig, train_x: torch.Tensor, test_x: torch.Tensor) -> None:
    """Refuse data this run cannot use: a batch larger than train_x (N, P), P unlike the model's, pixels outside [0, 1]."""
    n_train = train_x.shape[0]
    if config.batch_size > n_train:
        raise VaelabError(f"--batch-size {config.batch_size} exceeds the {n_train} training images; use a smaller batch")
    if train_x.shape[1] != config.model.input_dim:
        raise VaelabError(f"the data has {train_x.shape[1]} pixels per image but the model expects {config.model.input_dim}")
    _check_pixels(train_x, "training")
    _check_pixels(test_x, "test")


def _check_pixels(x: torch.Tensor, name: str) -> None:
    """Pixels (N, P) are Bernoulli means, the targets of the cross-entropy: finite and in [0, 1]."""
    if x.numel() == 0:
        return
    low, high = x.aminmax()  # NaN propagates into both
    if low >= 0 and high <= 1:
        return
    outside = ~((x >= 0) & (x <= 1))  # (N, P); True for NaN too
    image = int(outside.any(dim=1).nonzero()[0])
    value = x[image][outside[image]][0].item()
    raise VaelabError(
        f"{name} image {image} has a pixel value {value} outside [0, 1]; pixels are Bernoulli means: "
        f"scale them to [0, 1] (0..255 / 255) and remove NaNs"
    )


def _share(batch: torch.Tensor, distributed: Distributed) -> torch.Tensor:
    """This rank's contiguous share of a global batch (B, ...) -> (about B / world, ...)."""
    return torch.tensor_split(batch, distributed.world_size)[distributed.rank]


def _save_mid_epoch(
    state: dict[str, Any], running: torch.Tensor, distributed: Distributed, path: Path | None
) -> None:
    """Checkpoint inside an epoch, with the loss sums of every rank added up."""
    if distributed.world_size > 1:
        total = running.clone()
        dist.all_reduce(total)
        state["running"] = total.cpu()
    if distributed.is_main and path is not None:
        checkpoint.save(state, path)


def _agree(flag: bool, distributed: Distributed, device: torch.device) -> bool:
    """True on every rank when any rank was asked to stop, so that all stop at the same step."""
    if distributed.world_size == 1:
        return flag
    votes = torch.tensor([int(flag)], device=device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return bool(votes.item())


def write_metrics(history: list[dict[str, float]], path: str | Path) -> None:
    """The history as CSV (one row per epoch; losses in nats per image), replaced atomically."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=METRICS_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({name: _format(row[name]) for name in METRICS_COLUMNS})
    os.replace(temporary, path)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Read `write_metrics`' CSV back."""
    with open(path, newline="") as file:
        return [{name: float(value) for name, value in row.items()} for row in csv.DictReader(file)]


def _format(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e9 else f"{value:.6f}"
