"""`vaelab data fetch|info`: fetch and verify data sets ahead of time, or show the cache."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "data",
        help="fetch and verify data sets ahead of time, or show the cache",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="{fetch,info}")
    fetch = actions.add_parser(
        "fetch",
        help="fetch and verify a data set into the cache",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fetch.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist", help="data set")
    fetch.set_defaults(func=run_fetch)
    info = actions.add_parser("info", help="show what is cached, where, and whether it verifies")
    info.set_defaults(func=run_info)


def run_fetch(args: argparse.Namespace) -> int:
    from vaelab import data

    path = data.fetch(args.dataset)
    print(f"{args.dataset}: verified and cached in {path}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from vaelab import data

    print(f"cache: {data.default_cache_dir()}  (set VAELAB_DATA to move it)")
    print(f"  {'dataset':<14} {'state':<22} {'MB':>6}  directory")
    for entry in data.info():
        state = "verified" if entry["verified"] else (entry["problem"] or "unverified")
        print(f"  {entry['dataset']:<14} {state:<22.22} {entry['bytes'] / 1e6:6.1f}  {entry['dir']}")
        if entry["complete"] and not entry["verified"]:
            print(f"    {entry['problem']}; run `vaelab data fetch --dataset {entry['dataset']}` to rebuild it")
    return 0
