"""What subnormal floats cost a training step on a CPU, and what flushing them (the default) buys.

    .venv/bin/python bench/denormals.py [--checkpoint RUN/checkpoint.pt] [--preset vampprior-dreg]
        [--epochs 3] [--steps 30] [--threads 0]

A freshly initialised model has no subnormal numbers; a trained one has many: Adam's moments of
parameters whose gradient is zero (dead units, clipped pseudo-inputs, always-black pixels) decay
geometrically through float32's subnormal range, and so do exp() of large negative logits in the
likelihood and in the VampPrior's mixture. x86 CPUs take a slow microcode path for each.
Without --checkpoint the benchmark first trains --preset for --epochs epochs on MNIST with
subnormals kept, as vaelab 0.2 trained; then it times the same steps (forward, backward, Adam on
dynamically binarized training batches) from the same state with `--denormals keep` and with
`--denormals flush`, in alternation, and prints the median milliseconds of each and their ratio.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vaelab import checkpoint, data
from vaelab.config import TrainConfig, from_dict
from vaelab.models import build_model
from vaelab.nn import denormals_flushed
from vaelab.objectives import ObjectiveModule
from vaelab.presets import PRESETS, preset_config
from vaelab.training import train
from vaelab.training.state import build_optimizer

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def subnormal_count(tensors: list[torch.Tensor]) -> tuple[int, int]:
    """(number of subnormal entries, number of entries) over float32 tensors."""
    magnitudes = [t.detach().abs() for t in tensors if t.dtype == torch.float32]
    count = sum(int(((m > 0) & (m < SMALLEST_NORMAL)).sum()) for m in magnitudes)
    return count, sum(m.numel() for m in magnitudes)


def trained_state(options: argparse.Namespace) -> dict:
    """The checkpoint given, or one written by training the preset for a few epochs (subnormals kept)."""
    if options.checkpoint:
        return checkpoint.load(options.checkpoint, "cpu")
    config = dataclasses.replace(
        preset_config(options.preset), epochs=options.epochs, denormals="keep", lr_schedule="constant", patience=0
    )
    dataset = data.load_dataset("mnist")
    train_x, test_x = data.pixels(dataset.train.images), data.pixels(dataset.test.images)
    with tempfile.TemporaryDirectory() as run_dir:
        print(f"training {options.preset} for {options.epochs} epochs (subnormals kept) ...", flush=True)
        train(config, train_x, test_x[:1000], run_dir, progress=False)
        return checkpoint.load(Path(run_dir) / checkpoint.CHECKPOINT_NAME, "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a run's checkpoint.pt (default: train --preset first)")
    parser.add_argument("--preset", default="vampprior-dreg", choices=sorted(PRESETS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round; 4 rounds alternate the modes")
    parser.add_argument("--threads", type=int, default=0)
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)

    state = trained_state(options)
    config = from_dict(TrainConfig, state["config"])
    model = build_model(config.model)
    model.load_state_dict(state["model"])
    model.train()
    optimizer = build_optimizer(model, config.lr, torch.device("cpu"))
    optimizer.load_state_dict(state["optimizer"])
    moments = [value for entry in optimizer.state.values() for value in entry.values() if torch.is_tensor(value)]
    print(
        f"model: {config.preset or 'custom'} after {state['epoch']} epochs; subnormal entries: "
        "parameters %d of %d, Adam moments %d of %d"
        % (*subnormal_count(list(model.parameters())), *subnormal_count(moments))
    )

    train_x = data.pixels(data.load_dataset("mnist").train.images)
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.bernoulli(
            train_x[torch.randint(len(train_x), (config.batch_size,), generator=generator)], generator=generator
        )
        for _ in range(options.steps)
    ]
    noise = [
        torch.randn(config.objective.k, config.batch_size, config.model.latent_dim, generator=generator)
        for _ in batches
    ]

    def round_ms(mode: str) -> list[float]:
        """Milliseconds of each step, from the trained state, with subnormals flushed or kept."""
        module = ObjectiveModule(copy.deepcopy(model), config.objective)
        steps = build_optimizer(module.model, config.lr, torch.device("cpu"))
        steps.load_state_dict(optimizer.state_dict())
        times = []
        with denormals_flushed(mode == "flush"):
            for x, eps in zip(batches, noise):
                started = time.perf_counter()
                terms = module(x, eps, 1.0)
                steps.zero_grad(set_to_none=True)
                terms.surrogate.backward()
                steps.step()
                times.append(1000 * (time.perf_counter() - started))
        return times[2:]  # the first steps warm the allocator

    results: dict[str, list[float]] = {"keep": [], "flush": []}
    for mode in ("keep", "flush", "keep", "flush"):
        results[mode] += round_ms(mode)
    keep, flush = statistics.median(results["keep"]), statistics.median(results["flush"])
    print(
        f"{torch.get_num_threads()} threads, batch {config.batch_size}, {config.objective.name} k={config.objective.k}"
    )
    print(f"  --denormals keep : {keep:7.1f} ms/step (median of {len(results['keep'])})")
    print(f"  --denormals flush: {flush:7.1f} ms/step (median of {len(results['flush'])})")
    print(f"  flushing is {keep / flush:.2f}x faster")


if __name__ == "__main__":
    main()
