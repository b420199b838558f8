"""What the commands that use a trained model share (encode, reconstruct, score, detect): their data and output
options, opening the model and its images, running a per-image pass in resumable shards, writing per-image
tables. Not a subcommand: the verbs import it, it imports none of them.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from vaelab.config import BINARIZE_MODES, DATASETS
from vaelab.errors import VaelabError

SHARD_IMAGES = 500  # images per shard of a per-image pass (vaelab.evaluation.runner)


def add_model_and_data_arguments(parser: argparse.ArgumentParser, default_split: str = "test") -> None:
    """--checkpoint, and which images: --dataset, --data-dir, --split, --image-size, --size, --binarize, --seed."""
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file or the run directory that holds it")
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="images to read (default: the run's own data set, converted as it was trained)",
    )
    parser.add_argument("--data-dir", default=None, help="where the data set's files are (default: the run's)")
    parser.add_argument(
        "--split",
        choices=("train", "validation", "test"),
        default=default_split,
        help="validation = the run's held-out last --validation-size training images",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize the shorter side to S and centre-crop (default: as the run was trained, or as stored)",
    )
    parser.add_argument("--size", type=int, default=0, help="the first N images of the split; 0 = all")
    parser.add_argument(
        "--binarize",
        choices=("auto", *BINARIZE_MODES),
        default="auto",
        help="pixel targets: auto = as the model was trained (dynamic: one Bernoulli draw seeded by --seed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw (binarization, samples)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--out DIR, --overwrite, --device, --threads, --no-progress, --shard-images."""
    parser.add_argument("--out", required=True, help="directory for the result files (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="replace result files that exist in --out")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = torch's default")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--shard-images",
        type=int,
        default=SHARD_IMAGES,
        help="images per shard: finished shards are kept, so a killed run resumes, and torchrun's ranks share them",
    )


@dataclass(frozen=True)
class Inputs:
    """A trained model and the images a verb works on, prepared as the model was trained."""

    model: Any  # LatentVariableModel, on its device
    train_config: Any  # TrainConfig
    checkpoint: Path
    checkpoint_sha256: str
    selection: Any  # vaelab.data.selection.Selection
    x: Any  # (N, P) float32 model inputs
    binarization: str
    seed: int  # of the binarization's draw and every other draw

    @functools.cached_property
    def images_sha256(self) -> str:
        """Digest of the inputs as computed on (vaelab.evaluation.runner.images_sha256), hashed once."""
        from vaelab.evaluation.runner import images_sha256

        return images_sha256(self.x)

    def heading(self, device: Any) -> str:
        seed = f", Bernoulli draw seed {self.seed}" if self.binarization == "dynamic" else ""
        return (
            f"{self.checkpoint} on {self.selection.description} (binarization: {self.binarization}{seed}), "
            f"device {device}"
        )


def open_inputs(args: argparse.Namespace, device: Any, loaded: tuple[Any, Any] | None = None) -> Inputs:
    """Load the checkpoint (or take `loaded`, its (model, TrainConfig) already read) and the images the options
    name; refuse bad options before any work."""
    import torch

    from vaelab import checkpoint
    from vaelab.data.selection import select_images
    from vaelab.data.transforms import prepare
    from vaelab.integrity import sha256_file

    if args.threads < 0:
        raise VaelabError(f"--threads must be >= 0 (got {args.threads})")
    if args.shard_images < 1:
        raise VaelabError(f"--shard-images must be >= 1 (got {args.shard_images})")
    path = checkpoint.resolve(args.checkpoint)
    model, train_config = loaded if loaded is not None else checkpoint.load_model(path)
    if args.threads:
        torch.set_num_threads(args.threads)
    selection = select_images(
        train_config,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        image_size=args.image_size,
        size=args.size,
    )
    mode = train_config.binarize if args.binarize == "auto" else args.binarize
    x = prepare(selection.images, model.spec, mode, args.seed)
    return Inputs(model.to(device), train_config, path, sha256_file(path), selection, x, mode, args.seed)


def prepare_out(out: str | Path, names: list[str], overwrite: bool) -> Path:
    """The output directory, created; refuse if any result file exists there and --overwrite is not given."""
    directory = Path(out)
    existing = [name for name in names if (directory / name).exists()]
    if existing and not overwrite:
        raise VaelabError(f"{directory / existing[0]} exists; choose another --out or pass --overwrite to replace it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VaelabError(f"cannot create {directory}: {error.strerror}; choose a writable --out") from None
    return directory


def lock_out(directory: Path, verb: str, distributed: Any | None = None) -> Any:
    """A context that holds DIRECTORY's lock (vaelab.io.RunLock) while this verb writes it, so that a second
    process writing the same --out gets one clear line; under torchrun only rank 0 takes it."""
    import contextlib

    from vaelab.io import RunLock

    if distributed is not None and not distributed.is_main:
        return contextlib.nullcontext()
    return RunLock(directory, what=f"vaelab {verb}")


def run_pass(
    args: argparse.Namespace,
    inputs: Inputs,
    distributed: Any | None,
    directory: Path,
    verb: str,
    settings: Mapping[str, Any],
    compute: Callable[..., Any],
    description: str | None = None,
) -> Any:
    """compute over inputs.x in resumable shards kept in DIRECTORY/<verb>.partial-<fingerprint> -> (the merged
    per-image values, or None on ranks other than 0; the shard store, to remove once the results are written).
    distributed: torchrun's ranks (vaelab.distributed.Distributed), or None for one process."""
    import torch.distributed as dist
    from tqdm import tqdm

    from vaelab.evaluation import runner

    identity = {"verb": verb, "binarize": inputs.binarization, "seed": inputs.seed, **settings}
    digest = runner.fingerprint(inputs.checkpoint_sha256, inputs.images_sha256, identity, args.shard_images)
    store = runner.ShardStore(directory / f"{verb}.partial-{digest[:16]}", digest)
    ranks = runner.Ranks() if distributed is None else runner.Ranks(distributed.rank, distributed.world_size)
    bar = tqdm(
        total=sum(map(len, runner.shard_ranges(inputs.x.shape[0], args.shard_images)[ranks.rank :: ranks.world_size])),
        desc=description or verb,
        unit="image",
        disable=args.no_progress or not ranks.is_main,
        mininterval=1.0,
    )
    report = runner.PassReport()
    merged = runner.run_per_image(
        inputs.model,
        inputs.x,
        compute,
        store,
        args.shard_images,
        ranks=ranks,
        barrier=dist.barrier if dist.is_initialized() else None,
        progress=bar.update,
        report=report,
    )
    bar.close()
    if report.resumed_images and ranks.is_main:
        print(f"resumed: {report.resumed_images} images already done in {store.directory}")
    return merged, store


def per_image_columns(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten per-image tensors to CSV columns: (N,) stays "name", (N, D) becomes "name_0" .. "name_<D-1>"."""
    columns: dict[str, Any] = {}
    for name, value in values.items():
        array = value.numpy() if hasattr(value, "numpy") else value
        if array.ndim == 1:
            columns[name] = array
        elif array.ndim == 2:
            for j in range(array.shape[1]):
                columns[f"{name}_{j}"] = array[:, j]
    return columns


def write_results(
    directory: Path, stem: str, inputs: Inputs, values: Mapping[str, Any], meta: Mapping[str, Any]
) -> list[Path]:
    """DIRECTORY/<stem>.csv and DIRECTORY/<stem>.npz of the same per-image values (`write_csv`, `write_npz`)."""
    return [write_csv(directory, stem, inputs, values), write_npz(directory, stem, inputs, values, meta)]


def identity_columns(selection: Any) -> dict[str, Any]:
    """What names each image of a selection, in input order: "index" and "label" (N,), and "file" (N,) str, its
    path relative to the data folder (utf8_text), where the source has file names."""
    import numpy as np

    from vaelab.integrity import utf8_text

    columns = {"index": np.arange(selection.images.shape[0]), "label": selection.labels.numpy()}
    if selection.names is not None:
        columns["file"] = np.array([utf8_text(name) for name in selection.names], dtype=str)
    return columns


def write_csv(directory: Path, stem: str, inputs: Inputs, values: Mapping[str, Any]) -> Path:
    """DIRECTORY/<stem>.csv, atomically: a header, then one row per image in input order (index, label, file
    where the data have file names, the per-image columns, float64 to 17 significant digits)."""
    from vaelab.io import atomic_write

    columns = {**identity_columns(inputs.selection), **per_image_columns(values)}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(list(columns))
    for row in zip(*columns.values()):
        writer.writerow([_cell(value) for value in row])
    return atomic_write(directory / f"{stem}.csv", text.getvalue(), what=f"{stem} table")


def write_npz(directory: Path, stem: str, inputs: Inputs, values: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """DIRECTORY/<stem>.npz, atomically: "index", "label", "file" where the data have file names, every value as
    an array (N, ...) in input order, and "meta" (JSON text: where the numbers came from)."""
    import numpy as np

    from vaelab.io import atomic_write

    arrays = identity_columns(inputs.selection)
    arrays.update({name: value.numpy() if hasattr(value, "numpy") else value for name, value in values.items()})
    arrays["meta"] = np.array(json.dumps(dict(meta), sort_keys=True))
    return atomic_write(directory / f"{stem}.npz", lambda file: _save_npz(file, arrays), what=f"{stem} arrays")


def _save_npz(file: Any, arrays: Mapping[str, Any]) -> None:
    """What np.savez(file, **arrays) writes (one NAME.npy per array, uncompressed), for any names: np.savez takes
    its first parameter by the name "file", so it cannot be given an array called "file"."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _cell(value: Any) -> str:
    """A CSV cell: integers as they are, floats with 17 significant digits (a float64 round-trips)."""
    if isinstance(value, float) or getattr(value, "dtype", None) is not None and value.dtype.kind == "f":
        return repr(float(value))
    return str(value)


def base_meta(inputs: Inputs, device: Any) -> dict[str, Any]:
    """What every result file records of where its numbers came from."""
    import torch

    return {
        "checkpoint": str(inputs.checkpoint),
        "checkpoint_sha256": inputs.checkpoint_sha256,
        "dataset": inputs.selection.dataset,
        "split": inputs.selection.split,
        "source": inputs.selection.source,
        "images": int(inputs.x.shape[0]),
        "images_sha256": inputs.images_sha256,
        "binarization": inputs.binarization,
        "seed": inputs.seed,
        "device": str(device),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }


def image_shape_of(model: Any) -> tuple[int, int, int]:
    """The model's (C, H, W) for pictures; refuse a model whose inputs are not an image."""
    if model.spec.shape is None:
        raise VaelabError(
            f"the model's {model.spec.input_dim} inputs are not an image (no image shape, not a square); "
            "pictures need an image model"
        )
    return model.spec.shape
