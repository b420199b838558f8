"""A plain-PyTorch baseline: Burda et al.'s (2015) one-stochastic-layer VAE, trained for wall-clock budgets.

    .venv/bin/python bench/burda_baseline.py [--budgets 60 300 1800] [--threads 1] [--seed 1] [--out baseline]
        [--train-size N] [--quick] [--resume]

Written without vaelab's models, objectives or training loop, so that vaelab's training can be compared with
an ordinary PyTorch loop at equal training time (the anytime table). The network is Burda et al.'s
(section 5): encoder 784-200-200 tanh with two linear heads, mu and log σ² of a 50-d diagonal Gaussian;
decoder 50-200-200 tanh, then 784 Bernoulli logits; PyTorch's default initialisation. The protocol is the
literature's, as vaelab's presets follow it: MNIST binarized afresh at every step, the last 10 000 training
images held out for validation (binarized once), Adam(lr 1e-3), batch 100.

At each budget (seconds of optimizer steps; validation passes are not counted) the best-on-validation model
is written as a vaelab checkpoint, OUT/baseline-<budget>s/best.pt, holding the same network as the
`burda-vae` preset, and a row (budget_s, seconds, epochs, valid_loss) goes into OUT/baseline.csv. Nothing
here evaluates on the test set; `vaelab evaluate --checkpoint OUT/baseline-60s/best.pt --k 5000 --no-laplace`
does, binarizing the test images exactly as for vaelab's own runs.

While it trains, OUT/baseline-state.pt holds the loop after its last finished epoch (written atomically);
after a kill, the same command with --resume continues from there with the same draws. The file is removed
once every budget is written.

Importable with bench/ on sys.path: `from burda_baseline import train_for, to_vaelab_checkpoint`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vaelab import checkpoint, data
from vaelab.config import TrainConfig, to_dict
from vaelab.io import atomic_write
from vaelab.models import build_model
from vaelab.presets import BURDA_ONE_LAYER

PIXELS, HIDDEN, LATENT = 784, 200, 50  # Burda et al. 2015, section 5: 784-200-200-50
VALIDATION_IMAGES = 10_000  # the last 10 000 training images, as vaelab's presets hold out
VALIDATION_CHUNK = 2000  # images per validation batch; also how the validation noise is drawn (as vaelab does)
LOG_2PI = math.log(2.0 * math.pi)
CSV_COLUMNS = ("budget_s", "seconds", "epochs", "valid_loss")
STATE_FILE = "baseline-state.pt"  # the loop's state after its last finished epoch, while the run is under way

# Each baseline layer and the vaelab `burda-vae` parameter it becomes; vaelab's encoder has one head of 2·50
# outputs, read as (mu, log σ²) in that order, so the two heads are stacked into it (`vaelab_state_dict`).
LAYERS_TO_VAELAB = {
    "encoder.0": "encoder.net.trunk.0",
    "encoder.2": "encoder.net.trunk.2",
    "decoder.0": "likelihood.decoder.trunk.0",
    "decoder.2": "likelihood.decoder.trunk.2",
    "decoder.4": "likelihood.decoder.head",
}
STACKED_HEADS = (("mu", "logvar"), "encoder.net.head")


class LogDensities(NamedTuple):
    """The three log-densities of an importance weight, each (..., B) nats."""

    log_px_given_z: torch.Tensor  # log p(x|z), summed over pixels
    log_pz: torch.Tensor  # log N(z; 0, I)
    log_qz: torch.Tensor  # log q(z|x)


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)): broadcasting (..., D) -> (...) nats."""
    return -0.5 * (((z - mu).square() * torch.exp(-logvar) + logvar + LOG_2PI).sum(dim=-1))


def log_bernoulli(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = -Σ_i BCE(sigmoid(logits_i), x_i): logits (..., P), x broadcasting -> (...) nats."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(dim=-1)


class BurdaVAE(nn.Module):
    """q(z|x) = N(mu(x), diag σ²(x)), p(z) = N(0, I), p(x|z) = Bernoulli(sigmoid(decoder(z))) over 784 pixels."""

    def __init__(self, pixels: int = PIXELS, hidden: int = HIDDEN, latent: int = LATENT) -> None:
        super().__init__()
        self.latent_dim = latent
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, pixels)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, P) -> mu, logvar (B, D)."""
        h = self.encoder(x)  # (B, H)
        return self.mu(h), self.logvar(h)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + σ ⊙ eps (Kingma & Welling 2013, eq. 10): eps (..., B, D) -> z (..., B, D)."""
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., D) -> Bernoulli logits (..., P)."""
        return self.decoder(z)

    def negative_elbo(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """-ELBO = BCE(x, decode(z)) summed over pixels + KL(q(z|x) || N(0, I)), z from eps (..., B, D): (..., B)
        nats; eps (B, D) gives one sample per image.

        The KL is analytic, ½ Σ_j (mu_j² + σ_j² - 1 - log σ_j²) (Kingma & Welling 2013, appendix B).
        """
        mu, logvar = self.encode(x)
        reconstruction = -log_bernoulli(self.decode(self.reparameterize(mu, logvar, eps)), x)  # (B,)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)  # (B,)
        return reconstruction + kl

    def log_densities(self, x: torch.Tensor, z: torch.Tensor) -> LogDensities:
        """log p(x|z), log p(z), log q(z|x) at given latents: x (B, P), z (..., B, D) -> each (..., B) nats."""
        mu, logvar = self.encode(x)
        return self._log_densities(x, z, mu, logvar)

    def _log_densities(self, x: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> LogDensities:
        log_pz = -0.5 * (z.square() + LOG_2PI).sum(dim=-1)
        return LogDensities(log_bernoulli(self.decode(z), x), log_pz, log_normal_diag(z, mu, logvar))

    def log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """log w_i = log p(x, z_i) - log q(z_i|x), z_i ~ q(z|x) drawn with `generator`: x (B, P) -> (k, B) nats.

        L_k = logsumexp_i log w_i - log k is Burda et al.'s importance-weighted bound (eq. 8).
        """
        mu, logvar = self.encode(x)
        eps = torch.randn(k, *mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)  # (k, B, D)
        log_px_given_z, log_pz, log_qz = self._log_densities(x, self.reparameterize(mu, logvar, eps), mu, logvar)
        return log_px_given_z + log_pz - log_qz


def initial_model(seed: int) -> BurdaVAE:
    """The baseline before any step: PyTorch's default initialisation drawn under `seed`; the caller's global
    generator is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BurdaVAE()


def validation_set(valid_x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, noise) for the validation -ELBO: valid_x (N, P) in [0, 1] binarized once by a generator seeded
    seed + 2, and eps (N, D) drawn in chunks of 2000 images from one seeded `seed`: the draws vaelab's training
    makes for its validation -ELBO (`vaelab.evaluation.negative_elbo`), so the two report the same number for
    the same network."""
    targets = torch.bernoulli(valid_x, generator=torch.Generator().manual_seed(seed + 2))
    generator = torch.Generator().manual_seed(seed)
    chunks = [
        torch.randn(1, min(VALIDATION_CHUNK, len(valid_x) - start), LATENT, generator=generator)[0]
        for start in range(0, len(valid_x), VALIDATION_CHUNK)
    ]
    noise = torch.cat(chunks) if chunks else torch.empty(0, LATENT)
    return targets, noise


@torch.no_grad()
def validation_loss(model: BurdaVAE, targets: torch.Tensor, noise: torch.Tensor) -> float:
    """The one-sample -ELBO averaged over the validation images (N, P), with the fixed noise (N, D): nats."""
    total = sum(
        model.negative_elbo(targets[start : start + VALIDATION_CHUNK], noise[start : start + VALIDATION_CHUNK])
        .double()
        .sum()
        .item()
        for start in range(0, len(targets), VALIDATION_CHUNK)
    )
    return total / len(targets)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


Snapshot = Callable[[float, float, float, dict, dict], None]


def train_for(
    budgets_s: list[float],
    train_x: torch.Tensor,
    valid_x: torch.Tensor,
    *,
    seed: int,
    threads: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    on_snapshot: Snapshot,
    on_epoch: Callable[[dict], None] | None = None,
    resume: dict | None = None,
) -> list[dict[str, float]]:
    """Train a BurdaVAE until the largest budget (seconds of optimizer steps) is spent; snapshot at each budget.

    train_x (N, P), valid_x (M, P): float pixels in [0, 1]. Each step takes the next `batch_size` images of the
    epoch's permutation, binarizes them afresh, and minimises the batch's mean -ELBO (the sum over the batch
    divided by its size; vaelab minimises the sum, which Adam's scale invariance makes the same step up to its
    eps). Every draw (permutation, binarization, noise) comes from one generator seeded `seed`; `threads` > 0
    sets torch's thread count. The clock runs only around the steps: the validation -ELBO after every epoch,
    which picks the best-on-validation model, is not counted.

    After each step, when the training time has passed the next budget:
    `on_snapshot(budget_s, seconds_trained, epochs, best_state_dict, last_state_dict)`, with `epochs`
    the (fractional) epochs trained and the best model chosen among the finished epochs' and the current one
    (evaluated on validation then, off the clock). Returns one row per budget: budget_s, seconds, epochs,
    valid_loss (the best model's validation -ELBO, nats per image).

    Resuming: after every epoch's validation, off the clock, `on_epoch(state)` receives everything the loop
    holds (weights, Adam's moments, the generator, the seconds and epochs trained, the best model and the rows
    so far, whose budgets a resumed run skips; a copy, plain tensors and numbers). `train_for(..., resume=state)` with
    the same arguments continues from it: the same draws and the same steps as the run that wrote it, so on
    the same clock the two end bit for bit alike. Steps after the last epoch's end are lost, not counted.
    """
    budgets = sorted(float(budget) for budget in budgets_s)
    if not budgets or budgets[0] <= 0:
        raise ValueError(f"budgets must be positive seconds (got {list(budgets_s)})")
    if len(train_x) == 0 or len(valid_x) == 0:
        raise ValueError("train_for needs training and validation images")
    if threads:
        torch.set_num_threads(threads)
    model = initial_model(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    valid_targets, valid_noise = validation_set(valid_x, seed)
    n_train = len(train_x)
    steps_per_epoch = math.ceil(n_train / batch_size)
    best_loss, best_state = math.inf, None  # the best finished epoch
    trained, epochs, rows = 0.0, 0, []
    images = [n_train, len(valid_x)]
    settings = {"budgets": list(budgets), "seed": seed, "batch_size": batch_size, "lr": lr, "images": images}
    if resume is not None:
        if resume["settings"] != settings:
            differ = sorted(key for key in settings if resume["settings"].get(key) != settings[key])
            raise ValueError(
                f"the saved state was trained with other {', '.join(differ)} ({resume['settings']}); resume with "
                "the same settings, or start afresh in another --out"
            )
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        trained, epochs, rows = resume["trained"], resume["epochs"], list(resume["rows"])
        best_loss, best_state = resume["best_loss"], resume["best_state"]
        budgets = [budget for budget in budgets if budget not in {row["budget_s"] for row in rows}]
        if not budgets:
            return rows

    while True:
        permutation = torch.randperm(n_train, generator=generator)
        model.train()
        started = time.perf_counter()
        for step in range(steps_per_epoch):
            # --- batch: a fresh Bernoulli draw of each image (dynamic binarization), and the noise ---
            indices = permutation[step * batch_size : (step + 1) * batch_size]
            x = torch.bernoulli(train_x[indices], generator=generator)  # (B, P)
            eps = torch.randn(x.shape[0], model.latent_dim, generator=generator)  # (B, D)
            # --- forward, backward, step ----------------------------------------------------------
            loss = model.negative_elbo(x, eps).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # --- a budget passed: stop the clock, pick the best model, snapshot, restart the clock ---
            if trained + time.perf_counter() - started < budgets[0]:
                continue
            trained += time.perf_counter() - started
            last_state = _copy_state(model)
            current_loss = validation_loss(model, valid_targets, valid_noise)
            if best_state is None or current_loss < best_loss:
                chosen_loss, chosen_state = current_loss, last_state
            else:
                chosen_loss, chosen_state = best_loss, best_state
            trained_epochs = epochs + (step + 1) / steps_per_epoch
            while budgets and trained >= budgets[0]:
                budget = budgets.pop(0)
                on_snapshot(budget, trained, trained_epochs, chosen_state, last_state)
                rows.append(
                    {"budget_s": budget, "seconds": trained, "epochs": trained_epochs, "valid_loss": chosen_loss}
                )
            if not budgets:
                return rows
            model.train()
            started = time.perf_counter()
        trained += time.perf_counter() - started
        epochs += 1
        # --- the epoch's validation -ELBO, off the clock: keep the best model -------------------
        epoch_loss = validation_loss(model, valid_targets, valid_noise)
        if epoch_loss < best_loss:
            best_loss, best_state = epoch_loss, _copy_state(model)
        if on_epoch is not None:
            state = {
                "settings": settings,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "trained": trained,
                "epochs": epochs,
                "best_loss": best_loss,
                "best_state": best_state,
                "rows": rows,
            }
            on_epoch(copy.deepcopy(state))


def save_state(state: dict, path: Path) -> None:
    """Write the loop's state (`train_for`'s on_epoch) to `path` atomically: a kill leaves the old file or the new."""
    atomic_write(path, lambda file: torch.save(state, file), what="baseline state")


def load_state(path: Path) -> dict:
    """The loop's state written by `save_state` (plain tensors and numbers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def vaelab_config(seed: int) -> TrainConfig:
    """The TrainConfig an exported checkpoint carries: the `burda-vae` network under the protocol's settings,
    so `vaelab evaluate` binarizes the test split (binarize="dynamic") exactly as for vaelab's runs."""
    return TrainConfig(
        model=BURDA_ONE_LAYER,
        binarize="dynamic",
        validation_size=VALIDATION_IMAGES,
        batch_size=100,
        lr=1e-3,
        seed=seed,
    )


def vaelab_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BurdaVAE's state dict under the names of vaelab's `burda-vae` model: layer for layer, the mu and
    log σ² heads stacked (mu first) into vaelab's one encoder head of 2·D outputs."""
    mapped = {}
    for ours, theirs in LAYERS_TO_VAELAB.items():
        for name in ("weight", "bias"):
            mapped[f"{theirs}.{name}"] = state_dict[f"{ours}.{name}"]
    heads, theirs = STACKED_HEADS
    for name in ("weight", "bias"):
        mapped[f"{theirs}.{name}"] = torch.cat([state_dict[f"{head}.{name}"] for head in heads])  # (2D, ...)
    return mapped


def to_vaelab_checkpoint(
    state_dict: dict[str, torch.Tensor], path: str | Path, seed: int, *, info: dict | None = None
) -> Path:
    """Write a BurdaVAE's weights as a vaelab checkpoint that `vaelab evaluate --checkpoint PATH` reads.

    The file holds what `vaelab.checkpoint.load_model` needs, "model" (the state dict of
    `build_model(BURDA_ONE_LAYER)`, loaded strictly, so every key and shape is checked) and "config"
    (`vaelab_config(seed)`), plus `info` (plain numbers and strings) under "baseline" if given.
    """
    config = vaelab_config(seed)
    with torch.random.fork_rng(devices=[]):  # building draws an initialisation we overwrite at once
        model = build_model(config.model)
    model.load_state_dict(vaelab_state_dict(state_dict))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "config": to_dict(config)}
    if info is not None:
        state["baseline"] = dict(info)
    checkpoint.save(state, path)
    return path


def synthetic_pixels(n: int, seed: int = 0, prototypes: int = 10) -> torch.Tensor:
    """n images (n, 784) of pixel probabilities in [0, 1]: noisy copies of a few random prototypes, something
    a VAE learns within seconds (for smoke runs and tests, not for figures). Split one call's images into
    training and validation: another seed draws other prototypes."""
    generator = torch.Generator().manual_seed(seed)
    shapes = (torch.rand(prototypes, PIXELS, generator=generator) < 0.3).float()  # (K, P)
    which = torch.randint(0, prototypes, (n,), generator=generator)
    noise = 0.1 * torch.rand(n, PIXELS, generator=generator)
    return (shapes[which] * 0.8 + noise).clamp(0.0, 1.0)


def mnist_pixels(train_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) pixels in [0, 1], (N, 784) each: MNIST's 60 000 training images through vaelab's
    loader (`vaelab.data.pixels`: uint8 / 255), the last 10 000 held out; train_size > 0 keeps only the first
    train_size of the remaining 50 000 (validation unchanged)."""
    images = data.pixels(data.load_dataset("mnist", progress=sys.stderr.isatty()).train.images)
    train_x, valid_x = images[:-VALIDATION_IMAGES], images[-VALIDATION_IMAGES:]
    return (train_x[:train_size] if train_size else train_x), valid_x


def write_rows(rows: list[dict[str, float]], path: Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=None, help="seconds (default 60 300 1800)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 = torch's default")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="baseline")
    parser.add_argument("--train-size", type=int, default=0, help="the first N training images; 0 = all 50 000")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run on 500 + 100 synthetic images (budgets 0.5 1 by default)"
    )
    parser.add_argument(
        "--resume", action="store_true", help=f"continue the run in OUT from its last epoch's OUT/{STATE_FILE}"
    )
    options = parser.parse_args(argv)
    budgets = options.budgets or ([0.5, 1.0] if options.quick else [60.0, 300.0, 1800.0])
    if options.quick:
        images = synthetic_pixels(600)
        train_x, valid_x = images[:500], images[500:]
    else:
        train_x, valid_x = mnist_pixels(options.train_size)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    resume = None
    if options.resume:
        if not state_path.is_file():
            raise SystemExit(f"--resume: {state_path} does not exist, so there is nothing to continue; drop --resume")
        resume = load_state(state_path)
    elif state_path.is_file():
        raise SystemExit(
            f"{out} holds a baseline run in progress ({state_path.name}); pass --resume to continue it, "
            "or give another --out"
        )
    else:
        settings = {**vars(options), "budgets": budgets, "argv": sys.argv, "torch": torch.__version__}
        (out / "baseline.json").write_text(json.dumps(settings, indent=2) + "\n")
    valid_targets, valid_noise = validation_set(valid_x, options.seed)
    rows: list[dict[str, float]] = [] if resume is None else list(resume["rows"])
    done = f", resuming after {resume['epochs']} epochs, {resume['trained']:.1f} s" if resume else ""
    print(f"{len(train_x)} training and {len(valid_x)} validation images, budgets {budgets} s{done}", flush=True)

    def on_snapshot(budget_s: float, seconds: float, epochs: float, best_state: dict, last_state: dict) -> None:
        model = initial_model(options.seed)
        model.load_state_dict(best_state)
        row = {
            "budget_s": budget_s,
            "seconds": seconds,
            "epochs": epochs,
            "valid_loss": validation_loss(model, valid_targets, valid_noise),
        }
        path = to_vaelab_checkpoint(best_state, out / f"baseline-{budget_s:g}s" / "best.pt", options.seed, info=row)
        rows.append(row)
        write_rows(rows, out / "baseline.csv")
        print(
            f"  {budget_s:g} s: {seconds:.1f} s trained, {epochs:.2f} epochs, "
            f"best validation -ELBO {row['valid_loss']:.2f} nats -> {path}",
            flush=True,
        )

    train_for(
        budgets,
        train_x,
        valid_x,
        seed=options.seed,
        threads=options.threads,
        on_snapshot=on_snapshot,
        on_epoch=lambda state: save_state(state, state_path),
        resume=resume,
    )
    state_path.unlink(missing_ok=True)  # every budget is written: nothing is left to resume
    print(f"wrote {out / 'baseline.csv'}")


if __name__ == "__main__":
    main()
