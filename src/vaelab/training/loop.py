"""The training loop: one visible loop over epochs and batches; returns the history.

Batches are gathered from float tensors that already live on the device (no per-sample
DataLoader), losses accumulate on the device, and every random draw (shuffling, dynamic
binarization, the reparameterization noise) comes from one seeded generator whose state is
checkpointed (training/state.py), so `--resume` continues bit-for-bit. The gradient comes from
a kernel where one serves the run (vaelab.kernels decides, in one place), from autograd
through the objective otherwise; under torchrun each rank takes its share of every global
batch and DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from vaelab import checkpoint
from vaelab.config import TrainConfig
from vaelab.errors import VaelabError
from vaelab.distributed import Distributed, agree, agree_max, all_reduce_sum, auto_threads, pick_device, share
from vaelab.distributions import bits_per_dim
from vaelab.evaluation.units import negative_elbo
from vaelab.kernels import Runtime, training_kernel
from vaelab.models.base import LatentVariableModel
from vaelab.nn import denormals_flushed
from vaelab.objectives import ObjectiveModule, kl_weight_at
from vaelab.training.guards import FiniteCheck, StopRequest, check_inputs
from vaelab.training.metrics import METRICS_NAME, write_metrics
from vaelab.training.schedule import BudgetPlan, learning_rate_at, warmup_weight
from vaelab.training.state import TrainState, epochs_since_best

# How often the host reads the loss to check that it is finite. On the CPU a read costs nothing,
# so every step, before the update; on an accelerator a read waits for the device's queue to
# drain, so every 50 steps and before anything is saved: a non-finite loss then stops the run
# within 50 steps, and what is on disk predates it.
LOSS_READ_EVERY = {"cpu": 1}
LOSS_READ_EVERY_ELSEWHERE = 50
# Under torchrun a --budget run's ranks agree on the elapsed time (the slowest rank's) every this many steps,
# and re-plan only then, so that every rank keeps the same plan.
PLAN_SYNC_EVERY = 16
BEST_NAME = "best.pt"


@dataclass
class TrainResult:
    """What `train` hands back: the model, one row per finished epoch, and why it stopped."""

    model: LatentVariableModel
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str = "completed"  # or "interrupted", "early" (--patience) or "budget" (--max-seconds, --budget)
    checkpoint_path: Path | None = None
    budget_plan: list[tuple[int, int]] = field(default_factory=list)  # --budget: the (step, planned steps) made


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
    on_epoch: Callable[[dict[str, float], LatentVariableModel], None] | None = None,
) -> TrainResult:
    """Minimise the objective (summed over each batch, as the PyTorch example) with Adam.

    train_x (N, P), test_x (M, P): float pixels in [0, 1], or uint8 images (N, [C,] H, W) as stored (a
    memory-mapped cache stays on disk: each batch is gathered and scaled by 1/255 on its own, so a set
    larger than memory trains); with `config.validation_size` V the last
    V training images are held out for model selection. Writes `metrics.csv` and the checkpoint
    into `run_dir` (rank 0 only) after every epoch, and `best.pt` whenever the validation -ELBO
    improves; `resume_state` is a loaded checkpoint to continue from; `on_epoch(row, model)` is
    called on rank 0 after each epoch (a logger's hook). Returns the history in nats per image.
    """
    train_x, valid_x = split_validation(config, train_x)
    check_inputs(config, train_x, test_x)
    device = device or pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    elif device.type == "cpu" and distributed.world_size == 1:
        threads, why = auto_threads(torch.get_num_threads())
        if why:
            torch.set_num_threads(threads)
            print(why, file=sys.stderr)
    run_dir = Path(run_dir) if run_dir is not None else None
    checkpoint_path = run_dir / checkpoint.CHECKPOINT_NAME if run_dir is not None else None
    if run_dir is not None and distributed.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    n_train = train_x.shape[0]

    # --- setup: the state (from the checkpoint when resuming), the data, the gradient's path -----
    if resume_state is None:
        state = TrainState.start(config, device)
    else:
        state = TrainState.resume(config, resume_state, device, distributed)
    model, optimizer, generator = state.model, state.optimizer, state.generator
    stored_8bit = train_x.dtype == torch.uint8  # batches are scaled to [0, 1] as they are gathered
    train_x, test_x, valid_x = _prepare_targets(
        config, train_x.to(device), as_pixels(test_x).to(device), as_pixels(valid_x).to(device), device
    )
    runtime = Runtime(distributed.world_size, config.autograd, config.detect_anomaly, config.precision, device.type)
    kernel = training_kernel(config.model, config.objective, runtime)
    compute_dtype = torch.bfloat16 if config.precision == "bf16" else None
    kernel_step = kernel.Step(model, compute_dtype) if kernel is not None else None
    objective: torch.nn.Module = ObjectiveModule(model, config.objective)
    if distributed.world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        objective = torch.nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)
    if config.compile and kernel_step is None:
        # 1.1-1.35x per autograd step on a 2-core CPU, for 4-22 s of compilation (bench/README.md).
        objective = torch.compile(objective)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute_dtype is not None)
    anomaly = torch.autograd.detect_anomaly() if config.detect_anomaly else contextlib.nullcontext()
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    samples, latent_dim = config.objective.k, config.model.latent_dim
    read_every = LOSS_READ_EVERY.get(device.type, LOSS_READ_EVERY_ELSEWHERE)
    result = TrainResult(model=model, history=state.history, checkpoint_path=checkpoint_path)
    # bits per dimension apply where p(x|z) is a normalised pmf of the pixels the loss sees
    in_bits = model.likelihood.discrete_8bit or (model.likelihood.kind == "bernoulli" and config.binarize != "none")
    # --budget: the schedules run over the steps the budget is planned to hold (training/schedule.py)
    plan = BudgetPlan.for_run(config, state.budget_plan) if config.budget else None
    if plan is not None:
        state.budget_plan = result.budget_plan = plan.entries  # one list: every checkpoint saves the plan so far
    trained_before = sum(past["seconds"] for past in state.history)
    set_lr = config.lr_schedule != "constant" or config.lr_warmup > 0
    if plan is not None and plan.done(state.epoch * steps_per_epoch + state.step):
        result.stopped = "budget"  # resumed after its budget was spent: nothing left to train
        return result

    with StopRequest() as stop, anomaly, denormals_flushed(config.denormals == "flush"):
        for epoch in range(state.epoch + 1, config.epochs + 1):
            permutation = state.begin_epoch(n_train)
            model.train()
            finite_check = FiniteCheck(state.running, distributed, device, first_step=state.step)
            started = time.perf_counter()
            bar = tqdm(
                range(state.step, steps_per_epoch),
                initial=state.step,
                total=steps_per_epoch,
                desc=f"epoch {epoch}" if plan is not None else f"epoch {epoch}/{config.epochs}",
                unit="batch",
                leave=False,
                mininterval=0.5,
                disable=not (progress and distributed.is_main),
            )
            steps_done = steps_per_epoch
            for step in bar:
                # --- where the run stands on its schedules: the fractional epoch, or the budget's plan ---
                global_step = (epoch - 1) * steps_per_epoch + step
                progress_epochs = epoch - 1 + (step + 1) / steps_per_epoch
                if plan is not None:
                    if plan.live and (distributed.world_size == 1 or global_step % PLAN_SYNC_EVERY == 0):
                        elapsed = trained_before + state.epoch_seconds + time.perf_counter() - started
                        plan.observe(global_step, agree_max(elapsed, distributed, device))
                    if plan.done(global_step):  # the budget is spent: this epoch ends here
                        steps_done = step
                        break
                    fraction = plan.fraction(global_step)
                else:
                    fraction = progress_epochs / config.epochs
                # --- batch: the global batch is drawn identically on every rank; each takes a share
                indices = permutation[step * config.batch_size : (step + 1) * config.batch_size]
                x = train_x.index_select(0, indices)  # (B, P); 5x faster than train_x[indices] on CPU
                if stored_8bit:
                    x = as_pixels(x)
                    if config.binarize == "threshold":
                        x = (x > 0.5).to(x.dtype)
                eps = torch.randn(samples, x.shape[0], latent_dim, generator=generator, device=device)  # (k, B, D)
                if config.binarize == "dynamic":
                    x = torch.bernoulli(x, generator=generator)
                if distributed.world_size > 1:
                    x, eps = share(x, distributed), share(eps, distributed, dim=1)
                kl_weight = kl_weight_at(config.objective, progress_epochs) * warmup_weight(config, fraction)
                if set_lr:
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate_at(config, fraction)
                # --- forward (and, with a kernel, the gradient) ---------------------------------
                if kernel_step is not None:
                    sums = kernel_step(x, eps, kl_weight)  # (loss, reconstruction, KL) summed, float64
                else:
                    with autocast:
                        terms = objective(x, eps, kl_weight)
                    sums = torch.stack((terms.loss.sum(), terms.reconstruction.sum(), terms.kl.sum())).detach().double()
                # --- log: the sums stay on the device, read for the finite check and the bar -----
                state.running += sums
                stopping = agree(stop.requested, distributed, device)  # finish this step, then stop
                saving_mid_epoch = step + 1 < steps_per_epoch and (
                    stopping or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0)
                )
                if (step + 1) % read_every == 0 or step + 1 == steps_per_epoch or saving_mid_epoch:
                    finite_check(epoch, step, indices)  # every rank stops here, before the update
                # --- backward and step: DDP averages gradients, so scale the local sum back up -----
                if kernel_step is None:
                    optimizer.zero_grad(set_to_none=True)
                    (terms.surrogate * distributed.world_size).backward()
                optimizer.step()
                if step % 50 == 0 and not bar.disable:
                    seen = min((step + 1) * config.batch_size, n_train)
                    bar.set_postfix(loss=f"{state.running[0].item() * distributed.world_size / seen:.2f}")
                # --- interrupted or due: checkpoint inside the epoch; on a stop, hand back ----------
                # (on the epoch's last step the epoch finishes normally and stops after its checkpoint)
                if saving_mid_epoch:
                    state.epoch, state.step = epoch - 1, step + 1
                    state.epoch_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    _save(state, config, distributed, checkpoint_path, all_reduce_sum(state.running, distributed))
                    if stopping:
                        bar.close()
                        result.stopped = "interrupted"
                        return result
            bar.close()
            seconds = state.epoch_seconds + time.perf_counter() - started

            # --- epoch metrics: the training sums over all ranks, the test -ELBO on rank 0 -------
            seen = min(steps_done * config.batch_size, n_train)  # fewer than n_train where a budget ended the epoch
            train_loss, train_rec, train_kl = (all_reduce_sum(state.running, distributed) / max(seen, 1)).tolist()
            test_rec, test_kl = negative_elbo(model, test_x, seed=config.seed, device=device)
            valid_loss = (
                sum(negative_elbo(model, valid_x, seed=config.seed, device=device)) if len(valid_x) else math.nan
            )
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "test_loss": test_rec + test_kl,
                "test_rec": test_rec,
                "test_kl": test_kl,
                "seconds": seconds,
                "train_rec": train_rec,
                "train_kl": train_kl,
                "valid_loss": valid_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "test_bpd": bits_per_dim(test_rec + test_kl, config.model.input_dim) if in_bits else math.nan,
                "steps": (epoch - 1) * steps_per_epoch + steps_done,
            }
            state.history.append(row)
            state.running.zero_()
            state.epoch, state.step, state.epoch_seconds = epoch, 0, 0.0
            since_best = epochs_since_best(state.history)
            improved = since_best == 0
            if distributed.is_main and run_dir is not None:
                _save(state, config, distributed, checkpoint_path)
                if improved:  # the best-on-validation model, kept beside the last
                    _save(state, config, distributed, run_dir / BEST_NAME)
                write_metrics(state.history, run_dir / METRICS_NAME)
            if distributed.is_main:  # the per-epoch line, with or without the progress bar
                tqdm.write(
                    f"epoch {epoch:3d}  train {row['train_loss']:8.3f}  test {row['test_loss']:8.3f} "
                    f"(rec {test_rec:8.3f} + KL {test_kl:6.3f}) nats/image{bits_text(row, in_bits)}  {seconds:6.2f} s"
                )
                if on_epoch is not None:
                    on_epoch(row, model)
            if agree(stop.requested, distributed, device):  # the signal came during the epoch's last step or its end
                result.stopped = "interrupted" if epoch < config.epochs else "completed"
                return result
            trained_seconds = trained_before = sum(past["seconds"] for past in state.history)
            if plan is not None and (steps_done < steps_per_epoch or plan.done(epoch * steps_per_epoch)):
                result.stopped = "budget"
                return result
            if config.max_seconds and trained_seconds >= config.max_seconds and epoch < config.epochs:
                result.stopped = "budget"
                return result
            if config.patience and since_best >= config.patience and epoch < config.epochs:
                if distributed.is_main:
                    tqdm.write(
                        f"early stop: no better validation -ELBO for {config.patience} epochs; best.pt holds the best"
                    )
                result.stopped = "early"
                return result
    return result


def bits_text(row: dict[str, float], in_bits: bool) -> str:
    """The per-epoch line's bits/dim, where they apply."""
    return f" = {row['test_bpd']:.4f} bits/dim" if in_bits else ""


def as_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, [C,] H, W) -> float32 (N, P) = value / 255 (vaelab.data.pixels); float (N, P) unchanged."""
    if x.dtype != torch.uint8:
        return x
    return x.reshape(x.shape[0], math.prod(x.shape[1:])).float() / 255  # no -1: an empty split has no size to infer


def split_validation(config: TrainConfig, train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(training images, validation images): the last `config.validation_size` of train_x (N, P) held out."""
    held_out = config.validation_size
    if held_out >= train_x.shape[0]:
        raise VaelabError(
            f"--validation-size {held_out} leaves no training images of {train_x.shape[0]}; use a smaller one"
        )
    return train_x[: train_x.shape[0] - held_out], train_x[train_x.shape[0] - held_out :]


def _prepare_targets(
    config: TrainConfig, train_x: torch.Tensor, test_x: torch.Tensor, valid_x: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixel targets: thresholded once, or (dynamic) the test and validation sets drawn once
    (seeds seed + 1 and seed + 2) so that their losses are comparable across epochs; the training
    images are drawn afresh at every step."""
    if config.binarize == "threshold":  # stored 8-bit training images are thresholded batch by batch
        keep = train_x.dtype == torch.uint8
        return tuple(x if keep and x is train_x else (x > 0.5).to(x.dtype) for x in (train_x, test_x, valid_x))
    if config.binarize == "dynamic":
        test_generator = torch.Generator(device=device).manual_seed(config.seed + 1)
        valid_generator = torch.Generator(device=device).manual_seed(config.seed + 2)
        return (
            train_x,
            torch.bernoulli(test_x, generator=test_generator),
            torch.bernoulli(valid_x, generator=valid_generator),
        )
    return train_x, test_x, valid_x


def _save(
    state: TrainState,
    config: TrainConfig,
    distributed: Distributed,
    path: Path | None,
    running: torch.Tensor | None = None,
) -> None:
    """Rank 0 writes the checkpoint (with all ranks' loss sums when given)."""
    if distributed.is_main and path is not None:
        checkpoint.save(state.to_checkpoint(config, running), path)
