"""Does `--compile` pay? One autograd training step, eager against torch.compile, for models no kernel serves.

    .venv/bin/python bench/compile.py [--steps 100] [--threads 0]

For each model: milliseconds per step (batch 128, fused Adam, random binary images), the ratio,
and the seconds torch.compile took before its first step (far less when TorchInductor's cache
already holds the kernels from an earlier run). Compiling pays for a run of N steps when
N x (eager - compiled) exceeds the compile time. Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from vaelab.config import ModelSpec, ObjectiveSpec
from vaelab.models import build_model
from vaelab.objectives import ObjectiveModule

CASES = {
    "VampPrior, ELBO": (ModelSpec(prior="vamp"), ObjectiveSpec()),
    "the example's MLP, IWAE k=5": (ModelSpec(), ObjectiveSpec(name="iwae", k=5)),
    "two layers (Burda), ELBO": (
        ModelSpec(latent_dims=(100, 50), hidden=(200, 100), depth=2, activation="tanh"),
        ObjectiveSpec(),
    ),
}


def seconds_per_step(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, k: int, latent: int, steps: int
) -> float:
    """Mean seconds of one step (forward, backward, Adam) over `steps` steps after 10 warm-up steps."""

    def step() -> None:
        terms = module(x, torch.randn(k, x.shape[0], latent))
        optimizer.zero_grad(set_to_none=True)
        terms.surrogate.backward()
        optimizer.step()

    for _ in range(10):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    x = (torch.rand(128, 784, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    print(f"{'model and objective':<32}{'eager ms':>10}{'compiled ms':>13}{'ratio':>8}{'compile s':>11}")
    for name, (spec, objective) in CASES.items():
        torch.manual_seed(0)
        model = build_model(spec)
        module = ObjectiveModule(model, objective)
        optimizer = torch.optim.Adam(model.parameters(), fused=True)
        eager = seconds_per_step(module, optimizer, x, objective.k, spec.latent_dim, args.steps)
        started = time.perf_counter()
        compiled = torch.compile(module)
        compiled(x, torch.randn(objective.k, 128, spec.latent_dim)).surrogate.backward()
        compile_seconds = time.perf_counter() - started
        fast = seconds_per_step(compiled, optimizer, x, objective.k, spec.latent_dim, args.steps)
        row = f"{name:<32}{eager * 1e3:>10.2f}{fast * 1e3:>13.2f}{eager / fast:>7.2f}x{compile_seconds:>11.1f}"
        print(row, flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
