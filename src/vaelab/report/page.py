"""The report page as one HTML string, from plain values (no torch here): tables, figures, the explorer.

Every picture is a base64 data URI and the stylesheet and script are inline, so the file loads
nothing from anywhere (vaelab.report.assets).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from typing import Any

from vaelab.report.assets import EXPLORER_JS, STYLE_CSS

# Captions of the figures vaelab writes; any other PNG in the run directory is shown under its name.
FIGURE_CAPTIONS = {
    "samples.png": "decoder means E[x|z] for z ~ p(z)",
    "reconstructions.png": "test images (odd rows) and the decoder means of their posterior means (even rows)",
    "manifold.png": "decoder means over a grid on the latent plane",
    "latent_scatter.png": "posterior means of test images",
    "interpolations.png": "decoder means along lines between test images' codes",
    "draws.png": "draws from the model",
    "training_strip.png": "pictures across training",
}


@dataclass(frozen=True)
class ReportContent:
    """What one run's report shows, read from its directory (vaelab.report.build_report)."""

    run_name: str
    run_dir: str
    summary: str  # one line: the model, the objective, the data, the final test -ELBO
    written_at: str
    config: dict[str, Any]  # config.json as written
    command: str | None  # command.txt
    metrics: list[dict[str, str]]  # metrics.csv rows, as written
    curves: bytes | None  # PNG of the loss curves
    evaluation: dict[str, Any] | None  # eval.json
    figures: list[tuple[str, bytes]]  # (file name, PNG bytes), in display order
    explorer: dict[str, Any]  # vaelab.report.explorer.explorer_data
    uses: tuple[UsedSet, ...] = ()  # sets scored or detected with the run's model (`vaelab report --use DIR`)


@dataclass(frozen=True)
class UsedSet:
    """A set of images a trained model scored (`vaelab score`) or ran a detector on (`vaelab detect score`):
    its heading, per-value summaries (name, mean, stderr, min, max), details and pictures."""

    title: str
    summaries: list[tuple[str, float, float, float, float]]
    details: dict[str, Any]
    figures: list[tuple[str, bytes]]


def render(content: ReportContent, version: str) -> str:
    """The whole self-contained page."""
    sections = [
        ("explorer-section", "Latent explorer", explorer_section(content.explorer)),
        ("training", "Training", training_section(content.metrics, content.curves)),
    ]
    if content.evaluation is not None:
        sections.append(("evaluation", "Evaluation", evaluation_section(content.evaluation)))
    sections += [(f"use-{n}", used.title, used_section(used, n)) for n, used in enumerate(content.uses, start=1)]
    sections += [
        ("figures", "Figures", figures_section(content.figures)),
        ("configuration", "Configuration", configuration_section(content.config, content.command)),
    ]
    nav = "".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title, _ in sections)
    body = "\n".join(
        f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n{inner}\n</section>'
        for anchor, title, inner in sections
    )
    name = html.escape(content.run_name)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vaelab report: {name}</title>
<link rel="icon" href="data:,">
<style>{STYLE_CSS}</style>
</head>
<body>
<header><div>
<h1>vaelab report <span class="run">{name}</span></h1>
<p class="summary">{html.escape(content.summary)}</p>
<p class="meta"><span class="mono">{html.escape(content.run_dir)}</span>
&middot; written {html.escape(content.written_at)} &middot; vaelab {html.escape(version)}</p>
<nav>{nav}</nav>
</div></header>
<main>
{body}
</main>
<footer>One self-contained file: it loads nothing from the network.</footer>
<script>{EXPLORER_JS}</script>
</body>
</html>
"""


# --- the explorer ------------------------------------------------------------------------------


def explorer_section(explorer: dict[str, Any]) -> str:
    plane, points = explorer["plane"], explorer["points"]
    count = points["count"]
    dim = plane["dim"]
    from_prior = points.get("source") == "prior"
    # a run trained through the Python API: its images were tensors in memory, so draws from the prior stand in
    codes = f"{count} draws of h from the prior" if from_prior else f"the posterior means of {count} test images"
    why = " (the run has no config.json naming its data: it was trained through the Python API)" if from_prior else ""
    if plane["kind"] == "latent":
        note = (
            f"The decoder's latent is 2-D with a N(0, I) prior, so the square is the latent itself, "
            f"z &isin; [&minus;{plane['view_extent']:g}, {plane['view_extent']:g}]&sup2;; dashed circles at 1 and 2 "
            f"prior standard deviations. Dots: {codes}{why}."
        )
    else:
        shares = plane["variance_shares"]
        second = f" and PC 2 {100 * shares[1]:.0f} %" if dim > 1 else ""
        note = (
            f"The decoder reads a {dim}-D latent h. The square is the plane through the mean of {codes}{why} "
            f"along their two leading principal directions (PC 1 holds "
            f"{100 * shares[0]:.0f} %{second} of their variance), &plusmn;3 standard deviations of PC 1 wide; "
            "the dots are those codes. "
            + (f"The sliders move the point along the other {dim - 2} directions." if dim > 2 else "")
        )
    note += (
        " Move the pointer over the square (or focus it and use the arrow keys): the image is the decoder's mean "
        "E[x|h] at that point, computed in this page from the run's weights."
    )
    vertical = plane["names"][1] if dim > 1 else "nothing (a 1-D latent)"
    # "</" would end the script element early; JSON allows "\/" for "/"
    payload = json.dumps(explorer, separators=(",", ":")).replace("</", "<\\/")
    return f"""<p class="note">{note}</p>
<div class="explorer">
<figure>
<canvas id="plane" tabindex="0" aria-label="latent plane: move the pointer to decode"></canvas>
<figcaption>horizontal: {html.escape(plane["names"][0])}, vertical: {html.escape(vertical)}</figcaption>
<div id="legend"></div>
</figure>
<figure>
<canvas id="decoded" aria-label="decoded image"></canvas>
<figcaption id="readout" class="mono"></figcaption>
<div class="buttons"><button id="reset" type="button">back to the centre</button></div>
</figure>
</div>
<div id="sliders"></div>
<script type="application/json" id="explorer-data">{payload}</script>"""


# --- training: metrics.csv and the loss curves -------------------------------------------------


def training_section(metrics: list[dict[str, str]], curves: bytes | None) -> str:
    if not metrics:
        return '<p class="note">No metrics.csv: training stopped before its first epoch ended.</p>'
    columns = list(metrics[0])
    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    rows = "\n".join(
        "<tr>"
        + "".join(f'<td class="number">{format_metric(column, row.get(column))}</td>' for column in columns)
        + "</tr>"
        for row in metrics
    )
    table = (
        f'<div class="scroll"><table class="data" id="metrics"><thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{rows}\n</tbody></table></div>"
    )
    figure = (
        f'<figure class="curves"><img src="{png_uri(curves)}" alt="loss curves"><figcaption>loss.png</figcaption>'
        "</figure>"
        if curves
        else ""
    )
    return (
        '<p class="note">Losses in nats per image, one row per epoch: <code>train_loss</code> is the objective\'s own '
        "value, <code>test_loss</code> the one-sample &minus;ELBO of the test images (rec: reconstruction term, "
        "kl: KL term).</p>\n"
        f'<div class="columns">{table}{figure}</div>'
    )


def format_metric(column: str, value: str | None) -> str:
    """A metrics.csv cell for reading: epochs whole, seconds to 0.1, rates to 3 digits, losses to 0.01 nats."""
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return html.escape(str(value))
    if not math.isfinite(number):
        return "&ndash;"
    if column == "epoch" or (number.is_integer() and column in ("step", "steps")):
        return f"{number:g}"
    if column == "seconds":
        return f"{number:.1f}"
    if column == "lr":
        return f"{number:.3g}"
    return f"{number:.2f}"


# --- evaluation: eval.json ---------------------------------------------------------------------


def evaluation_section(evaluation: dict[str, Any]) -> str:
    """Estimates (dicts with a mean) as one table of mean, stderr and seconds; every other field flattened."""
    estimates: list[tuple[str, dict[str, Any]]] = []
    details: list[tuple[str, Any]] = []
    for key, value in evaluation.items():
        if isinstance(value, dict) and "mean" in value:
            estimates.append((estimate_name(key, value), value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "mean" in v for v in value):
            estimates += [(estimate_name(key, v), v) for v in value]
        else:
            details += flatten(key, value)
    head = "<th>estimate</th><th>mean</th><th>stderr</th><th>seconds</th>"
    rows = "\n".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(
            f'<td class="number">{format_value(value.get(column))}</td>' for column in ("mean", "stderr", "seconds")
        )
        + "</tr>"
        for name, value in estimates
    )
    detail_rows = "\n".join(
        f'<tr><th>{html.escape(key)}</th><td class="mono">{format_value(value)}</td></tr>' for key, value in details
    )
    return (
        f'<p class="note">From eval.json ({html.escape(str(evaluation.get("units", "nats per image")))}).</p>\n'
        f'<div class="columns"><table class="data" id="eval"><thead><tr>{head}</tr></thead><tbody>\n{rows}\n'
        f'</tbody></table>\n<div class="scroll"><table class="data" id="eval-details"><tbody>\n{detail_rows}\n'
        "</tbody></table></div></div>"
    )


def estimate_name(key: str, value: dict[str, Any]) -> str:
    """'iwae' with k = 10 -> 'iwae (k = 10)'; the extra plain fields of an estimate name it."""
    extras = [f"{name} = {v}" for name, v in value.items() if name not in ("mean", "stderr", "seconds")]
    return f"{key} ({', '.join(extras)})" if extras else key


def flatten(key: str, value: Any) -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys; lists and scalars stay values."""
    if isinstance(value, dict) and value:
        return [row for name, inner in value.items() for row in flatten(f"{key}.{name}", inner)]
    return [(key, value)]


def format_value(value: Any) -> str:
    """A JSON value for a table cell: numbers to 4 significant digits (long lists shortened), the rest as JSON."""
    if isinstance(value, bool) or value is None:
        return html.escape(json.dumps(value))
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else "&ndash;"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, list) and len(value) > 12 and all(isinstance(v, (int, float)) for v in value):
        shown = ", ".join(f"{v:.4g}" for v in value[:10])
        return html.escape(f"[{shown}, … {len(value)} values]")
    return html.escape(json.dumps(value))


def used_section(used: UsedSet, number: int) -> str:
    """A scored or detected set: a table of its per-image values' summaries, its details, its pictures."""
    head = "<th>per image</th><th>mean</th><th>stderr</th><th>min</th><th>max</th>"
    rows = "\n".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f'<td class="number">{format_value(v)}</td>' for v in values)
        + "</tr>"
        for name, *values in used.summaries
    )
    detail_rows = "\n".join(
        f'<tr><th>{html.escape(key)}</th><td class="mono">{format_value(value)}</td></tr>'
        for key, value in used.details.items()
    )
    pictures = "\n".join(
        f'<figure><img src="{png_uri(png)}" alt="{html.escape(name)}">'
        f'<figcaption><span class="mono">{html.escape(name)}</span></figcaption></figure>'
        for name, png in used.figures
    )
    return (
        f'<div class="columns"><table class="data" id="use-{number}-values"><thead><tr>{head}</tr></thead><tbody>\n'
        f'{rows}\n</tbody></table>\n<div class="scroll"><table class="data"><tbody>\n{detail_rows}\n'
        f'</tbody></table></div></div>\n<div class="figures">\n{pictures}\n</div>'
    )


# --- figures and configuration -----------------------------------------------------------------


def figures_section(figures: list[tuple[str, bytes]]) -> str:
    if not figures:
        return '<p class="note">No pictures in this run directory.</p>'
    items = "\n".join(
        f'<figure><img src="{png_uri(png)}" alt="{html.escape(name)}">'
        f'<figcaption><span class="mono">{html.escape(name)}</span>'
        f"{': ' + html.escape(FIGURE_CAPTIONS[name]) if name in FIGURE_CAPTIONS else ''}</figcaption></figure>"
        for name, png in figures
    )
    return f'<p class="note">Click a figure to see it at the page\'s width.</p>\n<div class="figures">\n{items}\n</div>'


def configuration_section(config: dict[str, Any], command: str | None) -> str:
    """config.json as one table: the run's settings, then each nested spec (model, objective) as a group."""
    plain = [(key, value) for key, value in config.items() if not isinstance(value, dict)]
    groups = [("run", plain)] + [(key, list(value.items())) for key, value in config.items() if isinstance(value, dict)]
    body = "\n".join(
        f'<tr><th class="group" colspan="2">{html.escape(group)}</th></tr>\n'
        + "\n".join(
            f'<tr><th>{html.escape(key)}</th><td class="mono">{format_value(value)}</td></tr>' for key, value in rows
        )
        for group, rows in groups
    )
    table = f'<table class="data" id="config"><tbody>\n{body}\n</tbody></table>'
    shown_command = (
        f'<h3>command.txt</h3>\n<pre class="command">{html.escape(command.strip())}</pre>' if command else ""
    )
    return f'<p class="note">config.json: every setting of the run.</p>\n{shown_command}\n{table}'


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
