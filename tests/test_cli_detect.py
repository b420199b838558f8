"""`vaelab detect fit|score`: a detector fitted on a run's held-out images flags other images, measures itself
against known outliers, agrees with the Python OODDetector, and refuses another model's detector in one line."""

import csv
import json

import numpy as np
import pytest
import torch

from vaelab import OODDetector
from vaelab.checkpoint import load_model
from vaelab.data import load_dataset
from vaelab.detection.detector import ORIENTATION_WEIGHT

from conftest import run_ok, run_refused
from test_distributed import TINY

pytestmark = pytest.mark.usefixtures("plain_torch")


def score_args(checkpoint, detector, out, *options: str) -> list[str]:
    """`vaelab detect score` with a checkpoint, a detector file and an output directory, then `options`."""
    return [
        "detect",
        "score",
        "--checkpoint",
        str(checkpoint),
        "--detector",
        str(detector),
        "--out",
        str(out),
        *options,
    ]


def _squares(count: int, seed: int) -> torch.Tensor:
    """28x28 uint8 images of one bright square each (the in-distribution data)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    corners = torch.randint(2, 14, (count, 2), generator=generator)
    for image, (row, column) in zip(images, corners.tolist()):
        image[row : row + 12, column : column + 12] = 255
    return images


@pytest.fixture
def squares_run(tmp_path, capsys):
    """A run trained on squares (array data, a held-out validation split) and a noise set to tell apart."""
    np.savez(tmp_path / "squares.npz", train=_squares(160, 0).numpy(), test=_squares(60, 1).numpy())
    noise = torch.randint(0, 256, (60, 28, 28), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    np.savez(tmp_path / "noise.npz", train=noise[:10].numpy(), test=noise.numpy())
    run = tmp_path / "run"
    run_ok(
        [
            "train",
            "--dataset",
            "array",
            "--data-dir",
            str(tmp_path / "squares.npz"),
            "--batch-size",
            "16",
            "--hidden",
            "32",
            "--latent-dim",
            "2",
            "--epochs",
            "3",
            "--binarize",
            "threshold",
            "--validation-size",
            "60",
            "--out",
            str(run),
            "--no-progress",
        ],
        capsys,
    )
    return run


def test_fit_then_score_against_outliers(squares_run, tmp_path, capsys):
    run = squares_run
    out = run_ok(
        [
            "detect",
            "fit",
            "--checkpoint",
            str(run),
            "--out",
            str(tmp_path / "det"),
            "--statistic",
            "nll",
            "--k",
            "4",
            "--no-progress",
            "--shard-images",
            "16",
        ],
        capsys,
    )
    assert "fitting a 'nll' detector on" in out and "60 array validation images" in out
    saved = json.loads((tmp_path / "det" / "detector.json").read_text())
    assert len(saved["fit_scores"]) == 60 and saved["binarize"] == "threshold"
    out = run_ok(
        score_args(
            run,
            tmp_path / "det" / "detector.json",
            tmp_path / "s",
            "--against",
            "array",
            "--against-data-dir",
            str(tmp_path / "noise.npz"),
            "--no-progress",
        ),
        capsys,
    )
    line = next(line for line in out.splitlines() if "AUROC" in line)
    auroc = float(line.split("AUROC ")[1].split(",")[0])
    assert auroc > 0.95, line
    with open(tmp_path / "s" / "detect.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["index", "label", "score", "p_value", "flagged"] and len(rows) == 60
    # the same numbers as the Python detector on the same images
    model, config = load_model(run)
    detector = OODDetector.load(tmp_path / "det" / "detector.json", model)
    test = load_dataset("array", tmp_path / "squares.npz").test.images
    np.testing.assert_allclose([float(row["score"]) for row in rows], detector.score(test), rtol=1e-6)
    p_values = np.array([float(row["p_value"]) for row in rows])
    assert ((0 < p_values) & (p_values <= 1)).all()
    saved = np.load(tmp_path / "s" / "detect.npz")
    assert saved["against_score"].shape == saved["against_label"].shape == (60,)
    assert "file" not in saved and "against_file" not in saved  # array data have no file names
    assert (tmp_path / "s" / "detect.png").stat().st_size > 0


def test_outlier_labels_and_a_detector_of_another_model(squares_run, tmp_path, capsys):
    run = squares_run
    run_ok(
        [
            "detect",
            "fit",
            "--checkpoint",
            str(run),
            "--out",
            str(tmp_path / "det"),
            "--statistic",
            "dose",
            "--k",
            "2",
            "--no-progress",
        ],
        capsys,
    )
    run_refused(
        score_args(
            run,
            tmp_path / "det" / "detector.json",
            tmp_path / "s",
            "--outlier-labels",
            "0",
            "--binarize",
            "threshold",  # the detector's own: accepted
            "--no-progress",
        ),
        capsys,
        "--outlier-labels 0 mark 60 of 60 images",
    )
    refused = run_refused(
        score_args(
            run,
            tmp_path / "det" / "detector.json",
            tmp_path / "b",
            "--binarize",
            "dynamic",
            "--no-progress",
        ),
        capsys,
        "--binarize dynamic: the detector",
    )
    assert "fitted with binarization threshold" in refused and "vaelab detect fit --binarize dynamic" in refused
    assert not (tmp_path / "b" / "detect.csv").exists()
    other = tmp_path / "other"
    run_ok(
        [
            "train",
            *TINY,
            "--dataset",
            "array",
            "--data-dir",
            str(tmp_path / "squares.npz"),
            "--epochs",
            "1",
            "--out",
            str(other),
            "--no-progress",
        ],
        capsys,
    )
    run_refused(
        score_args(
            other,
            tmp_path / "det" / "detector.json",
            tmp_path / "t",
            "--no-progress",
        ),
        capsys,
        "was fitted for another model",
    )
    wide = np.zeros((8, 32, 32), np.uint8)
    np.savez(tmp_path / "wide.npz", train=wide, test=wide)
    run_refused(
        score_args(
            run,
            tmp_path / "det" / "detector.json",
            tmp_path / "u",
            "--against",
            "array",
            "--against-data-dir",
            str(tmp_path / "wide.npz"),
            "--no-progress",
        ),
        capsys,
        "--against array: the images are 1x32x32 (C x H x W), the model takes 1x28x28; use --image-size 28",
    )


def test_the_default_detector_says_which_question_each_image_fails(squares_run, tmp_path, capsys):
    """`combined` (the default) writes each image's p-values of its two questions beside the score, which is -log
    of the smaller (the orientation one counted ORIENTATION_WEIGHT times)."""
    run = squares_run
    out = run_ok(["detect", "fit", "--checkpoint", str(run), "--out", str(tmp_path / "det"), "--no-progress"], capsys)
    assert "fitting a 'combined' detector" in out
    detector = str(tmp_path / "det" / "detector.json")
    run_ok(score_args(run, detector, tmp_path / "s"), capsys)
    with open(tmp_path / "s" / "detect.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0])[-2:] == ["p_typical", "p_orientation"]
    typical, orientation = ([float(row[name]) for row in rows] for name in ("p_typical", "p_orientation"))
    smaller = np.minimum(typical, np.minimum(1, ORIENTATION_WEIGHT * np.array(orientation)))
    np.testing.assert_allclose([float(row["score"]) for row in rows], -np.log(smaller), rtol=1e-12)
