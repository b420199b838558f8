"""How fast vaelab trains and evaluates on this machine, against two yardsticks.

    .venv/bin/python bench/throughput.py                # full run on synthetic MNIST-shaped data
    .venv/bin/python bench/throughput.py --quick        # ~15 s: a smoke test, not a figure
    .venv/bin/python bench/throughput.py --mnist        # the real MNIST through vaelab.data

The yardsticks: the matmul roofline (the machine's fp32 rate on exactly the GEMMs of one
training step, so no training loop can beat it in fp32) and the PyTorch VAE example's loop
(a per-sample Dataset behind a DataLoader), re-created here as the baseline. Every measurement
runs in its own spawned process, so each peak RSS is its own; each time is the median of
--repeats windows after a warm-up. On a shared machine the absolute numbers move with the
load; the ratios, measured in the same run, are the figures to quote.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config import ModelSpec, TrainConfig
from vaelab.errors import VaelabError

MNIST_TRAIN = 60_000
MNIST_TEST = 10_000
IMAGE_SIDE = 28
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


@dataclass(frozen=True)
class Options:
    """One benchmark run's settings (the command line, resolved)."""

    steps: int = math.ceil(MNIST_TRAIN / 128)  # training steps per timed window: one epoch
    repeats: int = 5  # timed windows per measurement (the median is reported)
    batch_size: int = 128
    threads: int = 0  # 0 = torch's default
    mnist: bool = False
    data_dir: str | None = None
    eval_images: int = MNIST_TEST
    iwae_k: int = 100
    iwae_images: int = 1000
    roofline_iterations: int = 200  # step-GEMM sets per roofline window
    seed: int = 0
    conv_only: bool = False


# ---------------------------------------------------------------------------------------------
# FLOPs: counted from the GEMM list, so the roofline and the achieved rate use the same count.


def step_gemms(batch: int, model: ModelSpec = ModelSpec()) -> list[tuple[str, int, int, int]]:
    """(name, m, k, n) of every matmul in one training step, C (m, n) = A (m, k) @ B (k, n).

    nn.Linear y = x W^T: forward x (B, in) @ W^T; backward dy (B, out) @ W for the input's
    gradient and dy^T (out, B) @ x for the weight's. The first layer's input is the data,
    which needs no gradient, so autograd skips that GEMM and so do we.
    """
    (hidden,), latent = model.hidden, model.latent_dim  # the PyTorch example's one-layer MLP
    layers = [
        ("fc1", model.input_dim, hidden),
        ("fc2", hidden, 2 * latent),  # mu and logvar (the template's fc21 + fc22)
        ("fc3", latent, hidden),
        ("fc4", hidden, model.input_dim),
    ]
    gemms = []
    for name, fan_in, fan_out in layers:
        gemms.append((f"{name} forward", batch, fan_in, fan_out))
        if name != "fc1":
            gemms.append((f"{name} input grad", batch, fan_out, fan_in))
        gemms.append((f"{name} weight grad", fan_out, batch, fan_in))
    return gemms


def train_flops_per_image(model: ModelSpec = ModelSpec()) -> float:
    """FLOPs of one training step per image: sum of 2 m k n over `step_gemms`, divided by B."""
    batch = 128  # any batch: every GEMM is linear in it
    return sum(2 * m * k * n for _, m, k, n in step_gemms(batch, model)) / batch


# ---------------------------------------------------------------------------------------------
# Data: MNIST-shaped uint8 images, synthetic by default.


def load_images(options: Options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train images (N, 28, 28) uint8, their labels (N,) int64, test images (M, 28, 28) uint8."""
    if options.mnist:
        from vaelab.data import load_dataset

        dataset = load_dataset("mnist", options.data_dir, download=False)
        return dataset.train.images, dataset.train.labels, dataset.test.images
    generator = torch.Generator().manual_seed(options.seed)
    shape = (IMAGE_SIDE, IMAGE_SIDE)
    train = torch.randint(0, 256, (MNIST_TRAIN, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (MNIST_TRAIN,), generator=generator)
    test = torch.randint(0, 256, (MNIST_TEST, *shape), dtype=torch.uint8, generator=generator)
    return train, labels, test


def as_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1], as ToTensor scales them (in place, so
    the conversion's peak memory is not mistaken for training's)."""
    return images.reshape(images.shape[0], -1).float().div_(255)


def train_image_count(options: Options, available: int) -> int:
    return min(options.steps * options.batch_size, available)


# ---------------------------------------------------------------------------------------------
# Measurements. Each runs in a fresh spawned process and returns a dict with its peak RSS.


def _setup(options: Options) -> None:
    if options.threads:
        torch.set_num_threads(options.threads)


def _peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries the
    forked parent's RSS into ru_maxrss across the exec that spawn does, VmHWM starts afresh."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _median_spread(seconds: list[float]) -> tuple[float, float]:
    """Median and (max - min) / median of the timed windows."""
    median = statistics.median(seconds)
    return median, (max(seconds) - min(seconds)) / median


class StepGemms:
    """The step's GEMMs on random operands, each laid out as autograd has it, timed in a tight loop."""

    def __init__(self, batch: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator).to(dtype)

        self.operands = []
        for name, m, k, n in step_gemms(batch):
            if name.endswith("forward"):  # x (m, k) @ W^T, W (n, k) row-major
                self.operands.append((randn(m, k), randn(n, k).t()))
            elif name.endswith("input grad"):  # dy (m, k) @ W (k, n)
                self.operands.append((randn(m, k), randn(k, n)))
            else:  # dy^T, a transposed view of dy (k, m), @ x (k, n)
                self.operands.append((randn(k, m).t(), randn(k, n)))
        self.flops = sum(2 * m * k * n for _, m, k, n in step_gemms(batch))

    def gflops(self, iterations: int) -> float:
        """One window: GFLOP/s over `iterations` passes through all the step's GEMMs."""
        started = time.perf_counter()
        for _ in range(iterations):
            for a, b in self.operands:
                torch.mm(a, b)
        return self.flops * iterations / (time.perf_counter() - started) / 1e9


def _roofline_beside(options: Options) -> Callable[[], float]:
    """A warmed-up fp32 roofline window to time next to each measured window, at the run's
    thread count: the machine's speed drifts under load, so each ratio takes its own yardstick."""
    threads = torch.get_num_threads()
    gemms = StepGemms(options.batch_size, torch.float32, options.seed)
    gemms.gflops(max(options.roofline_iterations // 4, 2))

    def window() -> float:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        rate = gemms.gflops(options.roofline_iterations)
        torch.set_num_threads(before)
        return rate

    return window


def measure_roofline(options: Options, dtype_name: str = "float32") -> dict[str, Any]:
    """Median GFLOP/s of the step's GEMMs in `dtype_name` over max(--repeats, 5) windows."""
    _setup(options)
    gemms = StepGemms(options.batch_size, getattr(torch, dtype_name), options.seed)
    gemms.gflops(max(options.roofline_iterations // 4, 2))  # warm-up: kernels chosen, caches filled
    rates = [gemms.gflops(options.roofline_iterations) for _ in range(max(options.repeats, 5))]
    median, spread = _median_spread(rates)
    return {"gflops": median, "spread": spread, "threads": torch.get_num_threads(), "rss": _peak_rss_mib()}


def _training_result(images: int, seconds: list[float], rooflines: list[float]) -> dict[str, Any]:
    """Median images/s, and the median over windows of (achieved GFLOP/s / the roofline beside it);
    also the best window over the best roofline window, the least disturbed pair."""
    median, spread = _median_spread(seconds)
    flops = train_flops_per_image() * images
    ratios = [flops / window / 1e9 / roofline for window, roofline in zip(seconds, rooflines)]
    return {
        "images_per_s": images / median,
        "best_images_per_s": images / min(seconds),
        "spread": spread,
        "vs_roofline": statistics.median(ratios),
        "best_vs_roofline": flops / min(seconds) / 1e9 / max(rooflines),
        "roofline": statistics.median(rooflines),
        "threads": torch.get_num_threads(),
        "rss": _peak_rss_mib(),
    }


def measure_vaelab_train(
    options: Options, precision: str = "fp32", threads: int = 0, autograd: bool = False
) -> dict[str, Any]:
    """vaelab.training.train itself: each window is one train() call of one epoch over --steps
    batches, timed by its history's seconds (which leave out the per-epoch test pass).
    autograd=True times the reference path (--autograd) instead of the mlp-elbo kernel."""
    from vaelab.training import train

    _setup(options)
    roofline_window = _roofline_beside(options)
    train_images, _, test_images = load_images(options)
    n_train = train_image_count(options, train_images.shape[0])
    train_x = as_pixels(train_images[:n_train])
    test_x = as_pixels(test_images[: options.batch_size])
    del train_images, test_images
    config = TrainConfig(
        epochs=1,
        batch_size=options.batch_size,
        threads=threads or options.threads,
        precision=precision,
        seed=1,
        autograd=autograd,
    )
    warm_up = min(n_train, 10 * options.batch_size)
    train(config, train_x[:warm_up], test_x, progress=False)
    seconds, rooflines = [], []
    for _ in range(options.repeats):
        rooflines.append(roofline_window())
        seconds.append(train(config, train_x, test_x, progress=False).history[0]["seconds"])
    return _training_result(n_train, seconds, rooflines)


# --- the baseline: the PyTorch VAE example, re-created ---------------------------------------


class TemplateVAE(nn.Module):
    """The example's model: fc1 -> relu -> (fc21, fc22); fc3 -> relu -> fc4 -> sigmoid."""

    def __init__(self, config: ModelSpec = ModelSpec()) -> None:
        super().__init__()
        (hidden,), latent_dim = config.hidden, config.latent_dim
        self.input_dim = config.input_dim
        self.fc1 = nn.Linear(config.input_dim, hidden)
        self.fc21 = nn.Linear(hidden, latent_dim)
        self.fc22 = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, config.input_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.fc1(x))
        return self.fc21(hidden), self.fc22(hidden)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x.view(-1, self.input_dim))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def template_loss(
    reconstruction: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """The example's loss: BCE on the sigmoid output (summed) + the closed-form KL."""
    bce = F.binary_cross_entropy(reconstruction, x.view(reconstruction.shape), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def to_tensor(picture: Any) -> torch.Tensor:
    """torchvision's ToTensor for an 8-bit greyscale image: (H, W) uint8 -> (1, H, W) float / 255."""
    array = np.array(picture, dtype=np.uint8, copy=True)
    return (
        torch.from_numpy(array).view(array.shape[0], array.shape[1], 1).permute(2, 0, 1).contiguous().float().div(255)
    )


class PerSampleImages(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST's access pattern: one uint8 image becomes a PIL image, then
    a float tensor, per sample (numpy stands in for PIL where Pillow is not installed)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        try:
            from PIL import Image

            self.to_picture: Callable[[np.ndarray], Any] = Image.fromarray
        except ImportError:
            self.to_picture = np.asarray

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        picture = self.to_picture(self.images[index].numpy())
        return to_tensor(picture), int(self.labels[index])


def measure_dataloader_baseline(options: Options) -> dict[str, Any]:
    """The example's epoch loop over a DataLoader (shuffle, batch 128, no workers), timed per epoch."""
    _setup(options)
    roofline_window = _roofline_beside(options)
    train_images, labels, _ = load_images(options)
    n_train = train_image_count(options, train_images.shape[0])
    dataset = PerSampleImages(train_images[:n_train], labels[:n_train])
    torch.manual_seed(1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=options.batch_size, shuffle=True, num_workers=0)
    model = TemplateVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch(max_batches: int) -> float:
        model.train()
        train_loss = 0.0
        for batch_index, (data, _) in enumerate(loader):
            if batch_index == max_batches:
                break
            optimizer.zero_grad()
            reconstruction, mu, logvar = model(data)
            loss = template_loss(reconstruction, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()  # the example reads the loss every step
            optimizer.step()
        return train_loss

    epoch(10)  # warm-up, as vaelab's measurement gets
    seconds, rooflines = [], []
    for _ in range(options.repeats):
        rooflines.append(roofline_window())
        started = time.perf_counter()
        epoch(len(loader))
        seconds.append(time.perf_counter() - started)
    return _training_result(n_train, seconds, rooflines)


# --- evaluation ------------------------------------------------------------------------------


def _eval_model_and_data(options: Options, count: int) -> tuple[torch.nn.Module, torch.Tensor]:
    from vaelab.models import build_model

    _setup(options)
    _, _, test_images = load_images(options)
    torch.manual_seed(options.seed)
    return build_model(ModelSpec()), as_pixels(test_images[:count])


def _time_calls(options: Options, call: Callable[[], object], images: int) -> dict[str, Any]:
    call()  # warm-up
    seconds = []
    for _ in range(options.repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    median, spread = _median_spread(seconds)
    return {
        "images_per_s": images / median,
        "spread": spread,
        "threads": torch.get_num_threads(),
        "rss": _peak_rss_mib(),
    }


def measure_negative_elbo(options: Options) -> dict[str, Any]:
    """vaelab.evaluation.negative_elbo over --eval-images test images."""
    from vaelab.evaluation import negative_elbo

    model, x = _eval_model_and_data(options, options.eval_images)
    return _time_calls(options, lambda: negative_elbo(model, x, seed=0), x.shape[0])


def measure_iwae(options: Options) -> dict[str, Any]:
    """vaelab.evaluation.importance_weighted_bounds with k = --iwae-k over --iwae-images images."""
    from vaelab.evaluation import importance_weighted_bounds

    model, x = _eval_model_and_data(options, options.iwae_images)
    call = lambda: importance_weighted_bounds(model, x, ks=[options.iwae_k], seed=0)  # noqa: E731
    return _time_calls(options, call, x.shape[0])


# --- convolutional networks: the step's own convolutions as the yardstick ------------------------

CONV_PRESETS = ("conv-vamp", "resnet-vamp")
PROTOCOL_TRAIN = 50_000  # training images per epoch under the likelihood protocol (60 000 - 10 000 validation)


@dataclass(frozen=True)
class LayerCall:
    """One Conv2d or Linear call of a forward pass: its module, its input's shape and its forward FLOPs."""

    module: nn.Module
    input_shape: tuple[int, ...]
    flops: float


def forward_layer_calls(model: nn.Module, run: Callable[[], object]) -> list[LayerCall]:
    """Every Conv2d / Linear call that `run()` makes, with 2 x multiply-adds as its forward FLOPs."""
    calls: list[LayerCall] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        calls.append(LayerCall(module, tuple(inputs[0].shape), 2.0 * output.numel() * per_output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return calls


class LayerRoofline:
    """The machine's rate on exactly a step's Conv2d/Linear calls: each replayed alone, forward and backward
    (input and weight gradients: 3x the forward FLOPs), on random inputs of the recorded shapes."""

    def __init__(self, calls: list[LayerCall], seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.calls = [(call.module, torch.randn(call.input_shape, generator=generator)) for call in calls]
        self.flops = 3.0 * sum(call.flops for call in calls)

    def gflops(self, iterations: int) -> float:
        started = time.perf_counter()
        for _ in range(iterations):
            for module, x in self.calls:
                x = x.detach().requires_grad_(True)
                module(x).sum().backward()
        return self.flops * iterations / (time.perf_counter() - started) / 1e9


def conv_step_calls(preset: str, batch_size: int) -> tuple[Any, list[LayerCall]]:
    """The preset's config and the Conv2d/Linear calls of one training step's forward pass (batch and
    the VampPrior's pseudo-inputs)."""
    from vaelab.models import build_model
    from vaelab.objectives import ObjectiveModule
    from vaelab.presets import preset_config

    config = preset_config(preset)
    torch.manual_seed(0)
    model = build_model(config.model)
    objective = ObjectiveModule(model, config.objective)
    x = torch.rand(batch_size, config.model.input_dim).bernoulli()
    eps = torch.randn(config.objective.k, batch_size, config.model.latent_dim)
    return config, forward_layer_calls(model, lambda: objective(x, eps, 1.0))


def measure_conv_train(options: Options, preset: str) -> dict[str, Any]:
    """vaelab.training.train on a convolutional preset (dynamic binarization of synthetic grey images), each
    window one epoch of --steps batches timed by its history, beside a replay of the step's own layers."""
    from vaelab.training import train

    _setup(options)
    config, calls = conv_step_calls(preset, 100)
    batch = config.batch_size
    roofline = LayerRoofline(calls, options.seed)
    roofline.gflops(2)  # warm-up
    steps = max(2, options.steps // 4)  # a conv step costs 5-10x an MLP one
    generator = torch.Generator().manual_seed(options.seed)
    train_x = torch.rand(steps * batch, config.model.input_dim, generator=generator)
    test_x = torch.rand(batch, config.model.input_dim, generator=generator)
    config = replace(config, epochs=1, validation_size=0, patience=0, threads=options.threads)
    train(config, train_x[: 2 * batch], test_x, progress=False)  # warm-up
    seconds, rates = [], []
    for _ in range(options.repeats):
        rates.append(roofline.gflops(max(1, steps // 4)))
        seconds.append(train(config, train_x, test_x, progress=False).history[0]["seconds"])
    flops_per_image = 3.0 * sum(call.flops for call in calls) / batch
    images = steps * batch
    median, spread = _median_spread(seconds)
    achieved = [flops_per_image * images / window / 1e9 for window in seconds]
    return {
        "images_per_s": images / median,
        "seconds_per_epoch": PROTOCOL_TRAIN * median / images,
        "gflops": statistics.median(achieved),
        "vs_roofline": statistics.median(a / r for a, r in zip(achieved, rates)),
        "roofline": statistics.median(rates),
        "flops_per_image": flops_per_image,
        "spread": spread,
        "rss": _peak_rss_mib(),
    }


def conv_report(options: Options) -> None:
    """The convolutional presets' rows: seconds per 50 000-image epoch and % of their layers' own rate."""
    print()
    print(
        f"{'convolutional preset':<22}{'MFLOP/img':>10}{'images/s':>10}{'s/epoch':>9}{'GFLOP/s':>9}"
        f"{'layer rate':>11}{'of it':>7}{'spread':>8}{'RSS MiB':>9}"
    )
    for preset in CONV_PRESETS:
        result = in_fresh_process(measure_conv_train, options, preset)
        print(
            f"{preset:<22}{result['flops_per_image'] / 1e6:>10.1f}{result['images_per_s']:>10,.0f}"
            f"{result['seconds_per_epoch']:>9.1f}{result['gflops']:>9.1f}{result['roofline']:>11.1f}"
            f"{100 * result['vs_roofline']:>6.0f}%{100 * result['spread']:>7.0f}%{result['rss']:>9.0f}"
        )
    print(
        "MFLOP/img: 3 x the forward FLOPs of every Conv2d and Linear call of a step (batch 100 plus the VampPrior's "
        "pseudo-inputs), per training image; layer rate: those same calls replayed alone, forward and backward, in "
        "the same process just before each window (the convolution roofline for exactly this step); s/epoch: the "
        "protocol's 50 000 training images."
    )


def in_fresh_process(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run function(*args) in a new spawned interpreter, so its peak RSS is its own."""
    # An executor, not a Pool: a worker that dies raises BrokenProcessPool instead of hanging.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as executor:
        return executor.submit(function, *args).result()


# ---------------------------------------------------------------------------------------------
# Report.


def cpu_description() -> tuple[str, str]:
    """The CPU's model name and which of CPU_FLAGS /proc/cpuinfo lists."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    present = [flag for flag in CPU_FLAGS if flag in flags]
    absent = [flag for flag in CPU_FLAGS if flag not in flags]
    return model, " ".join(present) + (f" (absent: {' '.join(absent)})" if absent else "")


def _load() -> str:
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="training steps per timed window (default: one 60 000-image epoch)")
    parser.add_argument("--repeats", type=int, help="timed windows per measurement (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny windows: checks the script, measures little")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--mnist", action="store_true", help="the real MNIST via vaelab.data instead of random images")
    parser.add_argument("--data-dir", help="with --mnist: where the MNIST files are (default: vaelab's cache)")
    parser.add_argument("--iwae-k", type=int, default=100, help="k of the IWAE row (default 100)")
    parser.add_argument(
        "--conv-only", action="store_true", help="only the convolutional presets' rows (their layers' own rate)"
    )
    args = parser.parse_args(argv)
    options = Options(
        threads=args.threads, mnist=args.mnist, data_dir=args.data_dir, iwae_k=args.iwae_k, conv_only=args.conv_only
    )
    if args.quick:
        options = replace(options, steps=8, repeats=2, eval_images=512, iwae_images=64, roofline_iterations=20)
    if args.steps is not None:
        options = replace(options, steps=args.steps)
    if args.repeats is not None:
        options = replace(options, repeats=args.repeats)
    if options.steps < 1 or options.repeats < 1 or options.threads < 0 or options.iwae_k < 1:
        parser.error("--steps, --repeats and --iwae-k must be >= 1, --threads >= 0")
    return options


def _row(
    name: str,
    images_per_s: float | None = None,
    seconds_per_epoch: float | None = None,
    gflops: float | None = None,
    vs_roofline: float | None = None,
    vs_baseline: float | None = None,
    spread: float | None = None,
    rss: float | None = None,
) -> str:
    def cell(value: float | None, text: str, width: int) -> str:
        return f"{text if value is not None else '-':>{width}}"

    return (
        f"{name:<34}"
        + cell(images_per_s, f"{images_per_s or 0:,.0f}", 10)
        + cell(seconds_per_epoch, f"{seconds_per_epoch or 0:.2f}", 9)
        + cell(gflops, f"{gflops or 0:.1f}", 9)
        + cell(vs_roofline, f"{100 * (vs_roofline or 0):.0f} %", 10)
        + cell(vs_baseline, f"{vs_baseline or 0:.2f}x", 15)
        + cell(spread, f"{100 * (spread or 0):.0f} %", 8)
        + cell(rss, f"{rss or 0:.0f}", 10)
    )


HEADER = (
    f"{'measurement':<34}{'images/s':>10}{'s/epoch':>9}{'GFLOP/s':>9}{'roofline':>10}"
    f"{'vs DataLoader':>15}{'spread':>8}{'RSS MiB':>10}"
)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.mnist:
        try:
            load_images(options)
        except VaelabError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if options.conv_only:
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs: {cpu_description()[0]}; load before {_load()}")
        conv_report(options)
        print(f"load after {_load()}")
        return 0
    flops_per_image = train_flops_per_image()
    n_train = train_image_count(options, MNIST_TRAIN)
    cpu_model, cpu_flags = cpu_description()
    load_before = _load()
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs: {cpu_model}")
    print(f"CPU flags: {cpu_flags}")
    print(
        f"data: {'MNIST' if options.mnist else 'synthetic uint8'}, {n_train} training images, batch "
        f"{options.batch_size}, "
        f"{options.steps} steps per window, median of {options.repeats} windows; "
        f"{flops_per_image / 1e6:.2f} MFLOP per training image ({flops_per_image * MNIST_TRAIN / 1e12:.3f} TFLOP per "
        "60 000-image epoch)"
    )

    roofline = in_fresh_process(measure_roofline, options, "float32")
    roofline_bf16 = in_fresh_process(measure_roofline, options, "bfloat16")
    threads = roofline["threads"]
    training = [
        ("train: vaelab fp32", in_fresh_process(measure_vaelab_train, options, "fp32")),
        ("train: vaelab bf16", in_fresh_process(measure_vaelab_train, options, "bf16")),
        ("train: vaelab fp32 --autograd", in_fresh_process(measure_vaelab_train, options, "fp32", 0, True)),
    ]
    if threads > 1:
        training.append(("train: vaelab fp32, 1 thread", in_fresh_process(measure_vaelab_train, options, "fp32", 1)))
    baseline = in_fresh_process(measure_dataloader_baseline, options)
    training.append(("train: DataLoader template (base)", baseline))
    elbo = in_fresh_process(measure_negative_elbo, options)
    iwae = in_fresh_process(measure_iwae, options)
    print(f"threads: {threads}; load average (1, 5, 15 min) before {load_before}, after {_load()}")
    print()

    print(HEADER)
    print("-" * len(HEADER))
    for name, result in (
        ("matmul roofline fp32 (step GEMMs)", roofline),
        ("matmul rate bf16 (step GEMMs)", roofline_bf16),
    ):
        images_per_s = result["gflops"] * 1e9 / flops_per_image
        print(
            _row(
                name,
                images_per_s,
                MNIST_TRAIN / images_per_s,
                result["gflops"],
                result["gflops"] / roofline["gflops"],
                spread=result["spread"],
                rss=result["rss"],
            )
        )
    for name, result in training:
        print(
            _row(
                name,
                result["images_per_s"],
                MNIST_TRAIN / result["images_per_s"],
                result["images_per_s"] * flops_per_image / 1e9,
                result["vs_roofline"],
                result["images_per_s"] / baseline["images_per_s"],
                result["spread"],
                result["rss"],
            )
        )
    print(_row("eval: -ELBO (negative_elbo)", elbo["images_per_s"], spread=elbo["spread"], rss=elbo["rss"]))
    iwae_name = f"eval: IWAE-{options.iwae_k} (importance_weighted)"
    if "unavailable" in iwae:
        print(f"{iwae_name:<34}  {iwae['unavailable']}")
    else:
        print(_row(iwae_name, iwae["images_per_s"], spread=iwae["spread"], rss=iwae["rss"]))
    print()
    for name, result in training[:2]:
        print(
            f"{name.removeprefix('train: ')}: {100 * result['vs_roofline']:.0f} % of the fp32 matmul roofline "
            f"(best windows: {100 * result['best_vs_roofline']:.0f} %); "
            f"{result['images_per_s'] / baseline['images_per_s']:.1f}x the DataLoader template's images/s "
            f"(best windows: {result['best_images_per_s'] / baseline['best_images_per_s']:.1f}x)"
        )
    rows = dict(training)
    fp32, autograd = rows["train: vaelab fp32"], rows["train: vaelab fp32 --autograd"]
    print(
        f"the gradient by hand: {fp32['images_per_s'] / autograd['images_per_s']:.2f}x the images/s of the same "
        f"training through autograd (--autograd: {100 * autograd['vs_roofline']:.0f} % of the roofline)"
    )
    print(
        "GFLOP/s counts 2 m k n per GEMM of the step (forward, weight and input gradients, no input gradient for the "
        "pixels; bf16 rows use the same count). A training row's roofline % is the median over its windows of the "
        "achieved rate over an fp32 roofline window timed just before it in the same process, at the run's thread "
        f"count (their median here: {fp32['roofline']:.0f} GFLOP/s for vaelab fp32): the machine's speed drifts "
        "under load. spread = (max - min) / median of the windows; RSS = the measuring process's peak."
    )
    conv_report(options)
    if options.steps * options.batch_size < MNIST_TRAIN:
        print("note: short windows (--quick or small --steps) time start-up as much as steady state")
    return 0


if __name__ == "__main__":
    sys.exit(main())
