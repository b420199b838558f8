"""metrics.csv: one row per finished epoch, losses in nats per image; the run's record."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from vaelab.io import atomic_write

METRICS_NAME = "metrics.csv"
# train_loss is the objective's own value (-ELBO, -β-ELBO or -L_k); test_loss is always the
# one-sample -ELBO with the run's seed, comparable across objectives and epochs.
# valid_loss is the validation -ELBO with --validation-size (nan without). test_bpd is test_loss in bits per
# dimension where the likelihood is a normalised pmf of the pixels (8-bit logistic, Bernoulli on binary data).
# steps counts the optimizer steps taken since the run began (a --budget run's last epoch may be partial).
METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "test_loss",
    "test_rec",
    "test_kl",
    "seconds",
    "train_rec",
    "train_kl",
    "valid_loss",
    "lr",
    "test_bpd",
    "steps",
)


def write_metrics(history: list[dict[str, float]], path: str | Path) -> None:
    """The history as CSV (one row per epoch; losses in nats per image), replaced atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=METRICS_COLUMNS)
    writer.writeheader()
    for row in history:
        writer.writerow({name: _format(row.get(name, math.nan)) for name in METRICS_COLUMNS})
    atomic_write(path, text.getvalue(), what="metrics file")


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Read `write_metrics`' CSV back."""
    with open(path, newline="") as file:
        return [{name: float(value) for name, value in row.items()} for row in csv.DictReader(file)]


def _format(value: float) -> str:
    if not math.isfinite(value):
        return "nan"
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.6g}" if abs(value) < 1e-3 else f"{value:.6f}"  # small: learning rates
