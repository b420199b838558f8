"""`vaelab report RUN`: one self-contained report.html (settings, metrics, pictures, a live latent explorer)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaelab.errors import VaelabError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write one self-contained HTML page about a run",
        description="Write RUN/report.html: the run's config, metrics and loss curves, its pictures, eval.json when "
        "present, and a live latent explorer that decodes the point under the pointer in the browser. The file "
        "loads nothing from the network.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run", metavar="RUN", help="the run directory that `vaelab train --out` wrote")
    parser.add_argument("--out", default=None, help="HTML file to write (default: RUN/report.html)")
    parser.add_argument(
        "--use",
        nargs="+",
        default=[],
        metavar="DIR",
        help="add a section for each directory `vaelab score` or `vaelab detect score` wrote with this run's model",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vaelab.io import atomic_write
    from vaelab.report import REPORT_NAME, build_report, check_run_dir

    run_dir = check_run_dir(args.run)
    out = Path(args.out) if args.out else run_dir / REPORT_NAME
    if out.suffix.lower() not in (".html", ".htm"):
        raise VaelabError(f"--out must name an .html file (got {out})")
    if not out.parent.is_dir():
        raise VaelabError(f"directory {out.parent} does not exist; create it or choose another --out")
    page = build_report(run_dir, tuple(args.use))
    atomic_write(out, page, what="report")
    print(f"wrote {out} ({len(page.encode()) / 1e6:.1f} MB)")
    return 0
