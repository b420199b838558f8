"""`vaelab data fetch|info`: fetch and verify data sets ahead of time, or show the cache."""

from __future__ import annotations

import argparse
from typing import Any

from vaelab.config import DATASETS


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
    info = actions.add_parser(
        "info",
        help="show what is cached, where, and whether it verifies; with --dataset and --data-dir, one data set",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    info.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="describe this data set (converting a folder or array into the cache first)",
    )
    info.add_argument("--data-dir", default=None, help="its directory or file, as for vaelab train")
    info.add_argument("--image-size", type=int, default=0, help="as vaelab train's --image-size")
    info.add_argument("--test-fraction", type=float, default=0.0, help="as vaelab train's --test-fraction")
    info.add_argument("--seed", type=int, default=1, help="the seed of the split, as vaelab train's --seed")
    info.set_defaults(func=run_info)


def run_fetch(args: argparse.Namespace) -> int:
    from vaelab import data

    path = data.fetch(args.dataset)
    print(f"{args.dataset}: verified and cached in {path}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from vaelab import data

    if args.dataset is not None:
        return describe(args)
    print(f"cache: {data.default_cache_dir()}  (set VAELAB_DATA to move it)")
    print(f"  {'dataset':<14} {'state':<22} {'MB':>6}  directory")
    report = data.info()
    for entry in (entry for entry in report if "converted" not in entry):
        state = "verified" if entry["verified"] else (entry["problem"] or "unverified")
        print(f"  {entry['dataset']:<14} {state:<22.22} {entry['bytes'] / 1e6:6.1f}  {entry['dir']}")
        if entry["complete"] and not entry["verified"]:
            print(f"    {entry['problem']}; run `vaelab data fetch --dataset {entry['dataset']}` to rebuild it")
    entries = [entry["converted"] for entry in report if "converted" in entry]
    if entries:
        print(f"  converted images ({len(entries)}): kind, source, C x H x W, counts, cache sha256, MB, directory")
    for entry in entries:
        if "problem" in entry:
            print(f"    {entry['dir']}: {entry['problem']}; delete it, or load the data set again to rebuild it")
            continue
        channels, height, width = entry["shape"]
        print(
            f"    {entry['kind']:<6} {entry['source']}: {channels}x{height}x{width}, {entry['train']} train + "
            f"{entry['test']} test, sha256 {entry['cache_digest'][:16]}..., {entry['bytes'] / 1e6:.1f} MB  "
            f"{entry['dir']}"
        )
    return 0


def describe(args: argparse.Namespace) -> int:
    """One data set's shape, channels, counts, classes and digests (a folder or array is converted first)."""
    from vaelab import data

    dataset = data.load_dataset(
        args.dataset,
        args.data_dir,
        image_size=args.image_size,
        test_fraction=args.test_fraction,
        seed=args.seed,
        progress=True,
    )
    channels, height, width = dataset.image_shape
    print(f"{dataset.name} from {dataset.source}")
    print(
        f"  shape    {channels} x {height} x {width} (channels x height x width), "
        f"{'grey' if channels == 1 else 'colour'}"
    )
    print(f"  images   {dataset.train.images.shape[0]} train, {dataset.test.images.shape[0]} test")
    if dataset.classes:
        print(
            f"  classes  {len(dataset.classes)}: {', '.join(dataset.classes[:10])}"
            f"{' ...' if len(dataset.classes) > 10 else ''}"
        )
    if dataset.cache_digest:
        print(f"  cache    sha256 {dataset.cache_digest}  (train.npy then test.npy)")
    if dataset.source_digest:
        print(f"  source   sha256 {dataset.source_digest}")
    return 0
