"""The `vaelab` command: one module per subcommand, each with `add_parser(subparsers)` and `run(args)`.

    vaelab train    [--dataset mnist] [--epochs 10] ... [--out DIR] [--resume] [--config RUN/config.json]
    vaelab encode      --checkpoint RUN --out DIR [--dataset D --split S] [--samples N]
    vaelab reconstruct --checkpoint RUN --out DIR [--dataset D --split S]
    vaelab score       --checkpoint RUN --out DIR [--dataset D --split S] [--k 1 100] [--laplace]
    vaelab detect      fit|score --checkpoint RUN --out DIR [--detector DET/detector.json] [--against D]
    vaelab evaluate --checkpoint RUN [--k 1 10 100 1000 5000]
    vaelab sample   --checkpoint RUN [--n 64] --out FILE.png
    vaelab plot     RUN [--out DIR] [--split test] [--size N] [--spherical] [--seed S]
    vaelab report   RUN [--out FILE.html]
    vaelab data     fetch|info
    vaelab laplace  factorial|integral ...

Only these modules read sys.argv, print tables and write run files; each imports the library
lazily inside `run`, so `vaelab --help` starts fast. No subcommand imports another; the verbs that
use a trained model share `common` (their options, inputs and result files).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from vaelab.cli import data, detect, encode, evaluate, laplace, plot, reconstruct, report, sample, score, train
from vaelab.errors import VaelabError

SUBCOMMANDS = (train, encode, reconstruct, score, detect, evaluate, sample, plot, report, data, laplace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaelab",
        description="Variational autoencoders and Laplace's method.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    subparsers = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{train,encode,reconstruct,score,detect,evaluate,sample,plot,report,data,laplace}",
    )
    for subcommand in SUBCOMMANDS:
        subcommand.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a VaelabError is printed as one line and gives exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VaelabError as error:
        print(f"vaelab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vaelab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
