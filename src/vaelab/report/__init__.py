"""One self-contained HTML page about a run: its settings, metrics, pictures and a live latent explorer.

    page = build_report("runs/mnist")   # the HTML text; `vaelab report RUN` writes it to RUN/report.html

- `explorer`: the decoder's weights and the latent plane, as data for the page's script;
- `page`: the HTML from plain values (tables, figures as data URIs, the explorer's markup);
- `assets`: the stylesheet and the explorer's JavaScript.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from vaelab.errors import VaelabError

REPORT_NAME = "report.html"
CHECKPOINT_NAME = "checkpoint.pt"  # what makes a directory a vaelab run (it holds the TrainConfig too)
# `vaelab train` also writes config.json (the settings as given, the data's digests) and names its data there;
# a run trained through the Python API (vaelab.train(config, train_x, test_x, run_dir)) has no config.json and
# its images were tensors in memory, so its report spreads the explorer's plane over draws from the prior.
CONFIG_NAME = "config.json"
# The pictures in the order the page shows them; any other PNG follows, by name. loss.png sits with the metrics.
FIGURE_ORDER = (
    "samples.png",
    "reconstructions.png",
    "manifold.png",
    "latent_scatter.png",
    "interpolations.png",
    "draws.png",
    "training_strip.png",
)
CURVES_NAME = "loss.png"


def check_run_dir(run_dir: str | Path) -> Path:
    """`run_dir` as a Path if it holds a vaelab run (a checkpoint.pt), else a VaelabError."""
    path = Path(run_dir)
    fix = "pass the directory that `vaelab train --out DIR` (or vaelab.train's run_dir) wrote"
    if not path.exists():
        raise VaelabError(f"no run directory {path}; {fix}")
    if not path.is_dir():
        raise VaelabError(f"{path} is not a directory; {fix}")
    if not (path / CHECKPOINT_NAME).is_file():
        raise VaelabError(f"{path} is not a vaelab run (no {CHECKPOINT_NAME}); {fix}")
    return path


def build_report(run_dir: str | Path, uses: tuple[str | Path, ...] = ()) -> str:
    """The report page of the run in `run_dir` as HTML text, with every picture and the decoder inside it, and a
    section for each directory in `uses` that `vaelab score` or `vaelab detect score` wrote with the run's model."""
    from vaelab import __version__
    from vaelab.checkpoint import load_model
    from vaelab.config import to_dict
    from vaelab.report.explorer import explorer_data
    from vaelab.report.page import ReportContent, render

    run_dir = check_run_dir(run_dir)
    used = tuple(read_used_set(run_dir, Path(directory)) for directory in uses)
    model, config = load_model(run_dir)
    from_cli = (run_dir / CONFIG_NAME).is_file()
    config_dict = _read_json(run_dir / CONFIG_NAME) if from_cli else to_dict(config)
    metrics = _read_metrics(run_dir / "metrics.csv")
    evaluation = _read_json(run_dir / "eval.json") if (run_dir / "eval.json").is_file() else None
    command = (run_dir / "command.txt").read_text() if (run_dir / "command.txt").is_file() else None
    content = ReportContent(
        run_name=run_dir.resolve().name,
        run_dir=str(run_dir.resolve()),
        summary=summary(config, metrics, data=None if from_cli else "data given as tensors"),
        written_at=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        config=config_dict,
        command=command,
        metrics=metrics,
        curves=_curves(run_dir, metrics),
        evaluation=evaluation,
        figures=_figures(run_dir),
        explorer=explorer_data(model, config, source="test" if from_cli else "prior"),
        uses=used,
    )
    return render(content, __version__)


LIKELIHOOD_NAMES = {"bernoulli": "Bernoulli", "logistic": "discretized logistic"}


def summary(config: Any, metrics: list[dict[str, str]], data: str | None = None) -> str:
    """One line: the model, the objective, the data (`data`, else the config's data set) and the last test -ELBO
    (and bits/dim where they apply), from a TrainConfig and metrics rows."""
    spec, objective = config.model, config.objective
    layers = f"{spec.layers} stochastic layer{'s' if spec.layers > 1 else ''}"
    latent = "+".join(str(d) for d in spec.latent_dims)
    if spec.network == "mlp":
        hidden = "+".join(str(h) for h in spec.hidden)
        network = f"hidden {hidden} x {spec.depth} {spec.activation}"
    else:
        network = f"{spec.network} ({spec.channels} channels, depth {spec.depth}, {spec.activation})"
    prior = "N(0, I) prior" if spec.prior == "normal" else f"VampPrior ({spec.pseudo_inputs} pseudo-inputs)"
    if spec.likelihood == "gaussian":
        likelihood = f"Gaussian (std {spec.likelihood_std:g})"
    elif spec.likelihood == "logistic-mixture":
        likelihood = f"mixture of {spec.mixture_components} discretized logistics"
    else:
        likelihood = LIKELIHOOD_NAMES.get(spec.likelihood, spec.likelihood)
    shape = f" ({' x '.join(str(n) for n in spec.shape)})" if spec.shape is not None else ""
    extras = {"iwae": f", k = {objective.k}", "dreg": f", k = {objective.k}", "beta": f", beta = {objective.beta:g}"}
    line = (
        f"VAE, {layers}: latent {latent}, {network}, {prior}, {likelihood}; "
        f"objective {objective.name}{extras.get(objective.name, '')}; {data or config.dataset}{shape}"
    )
    if metrics:
        last = metrics[-1]
        line += f"; {float(last.get('epoch', len(metrics))):g} epochs"
        try:
            line += f"; test -ELBO {float(last['test_loss']):.2f} nats per image"
            bits = float(last.get("test_bpd", "nan"))
            line += f" ({bits:.3f} bits/dim)" if math.isfinite(bits) else ""
        except (KeyError, ValueError):
            pass
    return line


USED_FILES = (("scores.npz", "Scored"), ("detect.npz", "Detected"))


def read_used_set(run_dir: Path, directory: Path) -> Any:
    """A directory `vaelab score` or `vaelab detect score` wrote -> page.UsedSet: each per-image value's mean,
    stderr, min and max, where the numbers came from, the AUROC against known outliers, and the pictures. Refused
    if it was scored with a checkpoint that is not this run's (checkpoint.pt or best.pt)."""
    import numpy as np

    from vaelab.integrity import check_schema, sha256_file
    from vaelab.report.page import UsedSet

    found = [(name, kind) for name, kind in USED_FILES if (directory / name).is_file()]
    fix = "pass a directory written by `vaelab score` or `vaelab detect score` with this run's checkpoint"
    if not found:
        raise VaelabError(f"{directory} holds no scores.npz or detect.npz; {fix}")
    name, kind = found[0]
    try:
        with np.load(directory / name, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise VaelabError(f"cannot read {directory / name} ({error}); {fix}") from None
    check_schema(
        meta,
        {"checkpoint_sha256": str, "dataset": str, "split": str, "images": int},
        where=str(directory / name),
        fix=fix,
    )
    ours = {sha256_file(path) for path in (run_dir / CHECKPOINT_NAME, run_dir / "best.pt") if path.is_file()}
    if meta["checkpoint_sha256"] not in ours:
        raise VaelabError(f"{directory / name} was written with another checkpoint than {run_dir}'s; {fix}")
    count = meta["images"]
    summaries = []
    for key, values in arrays.items():
        if key in ("index", "label") or values.ndim != 1 or values.shape[0] != count or values.dtype.kind not in "fb":
            continue
        values = values.astype(np.float64)
        stderr = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
        summaries.append((key, float(values.mean()), stderr, float(values.min()), float(values.max())))
    details = {
        key: meta[key] for key in ("dataset", "split", "images", "binarization", "statistic", "ks") if key in meta
    }
    details["directory"] = str(directory)
    if "against_score" in arrays:
        from vaelab.detection.metrics import detection_metrics

        details.update(detection_metrics(arrays["score"], arrays["against_score"]))
    figures = [(png.name, png.read_bytes()) for png in sorted(directory.glob("*.png"))]
    return UsedSet(f"{kind}: {meta['dataset']} {meta['split']} ({count} images)", summaries, details, figures)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VaelabError(f"cannot read {path} ({error}); restore it from the run or write it again") from None
    if not isinstance(value, dict):
        raise VaelabError(f"{path} is not a JSON object; restore it from the run or write it again")
    return value


def _read_metrics(path: Path) -> list[dict[str, str]]:
    """metrics.csv's rows as written (columns vary across vaelab versions); [] when there is none yet."""
    if not path.is_file():
        return []
    try:
        return list(csv.DictReader(io.StringIO(path.read_text(), newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise VaelabError(f"cannot read {path} ({error}); restore it from the run") from None


def _curves(run_dir: Path, metrics: list[dict[str, str]]) -> bytes | None:
    """loss.png as `vaelab train` wrote it, else the same figure drawn from metrics.csv (an interrupted run)."""
    if (run_dir / CURVES_NAME).is_file():
        return (run_dir / CURVES_NAME).read_bytes()
    try:
        history = [{key: float(row[key]) for key in ("epoch", "train_loss", "test_loss", "test_kl")} for row in metrics]
    except (KeyError, ValueError, TypeError):
        return None
    if not history:
        return None
    from vaelab.plots import loss_curves

    buffer = io.BytesIO()
    loss_curves(history).savefig(buffer, format="png")
    return buffer.getvalue()


def _figures(run_dir: Path) -> list[tuple[str, bytes]]:
    """Every PNG in the run directory but loss.png (shown with the metrics): vaelab's own first, then by name."""
    names = {path.name for path in run_dir.glob("*.png") if path.is_file() and not path.name.startswith(".")}
    names.discard(CURVES_NAME)
    ordered = [name for name in FIGURE_ORDER if name in names] + sorted(names - set(FIGURE_ORDER))
    return [(name, (run_dir / name).read_bytes()) for name in ordered]


__all__ = ["REPORT_NAME", "build_report", "check_run_dir", "summary"]
