"""Figures of a trained model: the arrays behind them (vaelab.visualize), the per-epoch strip, `vaelab plot`,
the figures at the end of `vaelab train` and its TensorBoard log, on tiny synthetic data."""

import csv
import json
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread


from conftest import run_ok, run_refused
from vaelab.config import ModelSpec
from vaelab.models import build_model
from vaelab.visualize import (
    EPOCH_SAMPLES_NAME,
    decoder_codes,
    draws_beside_means,
    fixed_samples,
    interpolations,
    lerp,
    manifold,
    normal_quantiles,
    plane_coordinates,
    principal_plane,
    read_epoch_samples,
    slerp,
)

pytestmark = pytest.mark.usefixtures("plain_torch")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("manifold.png", "latent_scatter.png", "interpolations.png", "draws.png", "training_strip.png")
TINY = ["--dataset", "idx", "--hidden", "16", "--batch-size", "8", "--no-progress"]


def tiny_model(latent_dims=(2,), seed=0, **spec):
    torch.manual_seed(seed)
    return build_model(ModelSpec(hidden=(16,) * len(latent_dims), latent_dims=latent_dims, **spec)).eval()


# --- the arrays ----------------------------------------------------------------------------------------


def test_the_quantile_grid_decodes_the_priors_quantiles_at_its_corners():
    model = tiny_model()
    grid = manifold(model, codes=torch.randn(50, 2) * 3, n=5)  # the codes do not move the prior's grid
    low, high = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.05, 0.95], dtype=torch.float64))
    assert low == pytest.approx(-1.6448536, abs=1e-6) and high == pytest.approx(1.6448536, abs=1e-6)
    assert grid.images.shape == (5, 5, 784) and grid.codes.shape == (5, 5, 2)
    torch.testing.assert_close(grid.codes[0, 0], torch.stack((low, high)))  # top left: z1 lowest, z2 highest
    torch.testing.assert_close(grid.codes[-1, -1], torch.stack((high, low)))
    torch.testing.assert_close(grid.codes[2, 2], torch.zeros(2, dtype=torch.float64))  # p = 0.5
    torch.testing.assert_close(grid.probabilities, torch.linspace(0.05, 0.95, 5, dtype=torch.float64))
    _, quantiles = normal_quantiles(5)
    torch.testing.assert_close(grid.across, quantiles)
    torch.testing.assert_close(grid.down, quantiles.flip(0))
    with torch.no_grad():
        for i, j in ((0, 0), (0, 4), (4, 0), (3, 1)):
            expected = model.likelihood.mean(grid.codes[i, j].float()[None])[0]
            torch.testing.assert_close(grid.images[i, j], expected)


def test_the_principal_plane_carries_the_largest_variance_and_the_grid_spans_two_sds():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(5, 5, generator=generator, dtype=torch.float64)
    codes = torch.randn(2000, 5, generator=generator, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1])
    codes = codes @ mixing + 4.0
    plane = principal_plane(codes)
    projected = plane_coordinates(plane, codes, count=5)  # (N, 5)
    variances = projected.var(dim=0)
    torch.testing.assert_close(variances, plane.variances)
    assert variances[0] == pytest.approx(torch.linalg.eigvalsh(torch.cov(codes.T)).max().item(), rel=1e-9)
    assert (variances[:-1] >= variances[1:]).all()
    for _ in range(20):  # no other direction does better
        direction = torch.randn(5, generator=generator, dtype=torch.float64)
        assert ((codes @ (direction / direction.norm())).var() <= variances[0] + 1e-9).all()

    model = tiny_model(latent_dims=(5,))
    grid = manifold(model, codes.float(), n=7)
    assert grid.probabilities is None
    spread = 2 * plane.variances[:2].sqrt()
    torch.testing.assert_close(grid.across[[0, -1]], torch.stack((-spread[0], spread[0])))
    torch.testing.assert_close(grid.down[[0, -1]], torch.stack((spread[1], -spread[1])))
    centre = plane.center.float()
    torch.testing.assert_close(grid.codes[3, 3].float(), centre, atol=1e-5, rtol=1e-5)
    corner = plane.center + spread[0] * plane.directions[0] - spread[1] * plane.directions[1]
    torch.testing.assert_close(grid.codes[-1, -1], corner)


def test_slerp_meets_both_codes_and_interpolates_the_norm_along_a_great_circle():
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    end = torch.randn(4, 6, generator=generator, dtype=torch.float64) * 2
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    path = slerp(start, end, t)  # (4, 9, 6)
    torch.testing.assert_close(path[:, 0], start, rtol=0, atol=1e-12)
    torch.testing.assert_close(path[:, -1], end, rtol=0, atol=1e-12)
    expected_norm = (1 - t) * start.norm(dim=-1, keepdim=True) + t * end.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(path.norm(dim=-1), expected_norm)
    # The direction turns at a constant rate: its angle from the start is t times the whole angle.
    unit = path / path.norm(dim=-1, keepdim=True)
    start_unit = start / start.norm(dim=-1, keepdim=True)
    angle = torch.acos((unit * start_unit[:, None]).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(angle, t * angle[:, -1:], atol=1e-7, rtol=0)
    # Parallel codes: the direction stays put, only the norm moves.
    parallel = slerp(start, 3 * start, t)
    torch.testing.assert_close(parallel, (1 + 2 * t)[None, :, None] * start[:, None])
    linear = lerp(start, end, t)
    assert torch.equal(linear[:, 0], start) and torch.equal(linear[:, -1], end)
    torch.testing.assert_close(linear[:, 4], (start + end) / 2)


def test_interpolations_decode_the_path_between_the_posterior_means():
    model = tiny_model(latent_dims=(3,))
    x = torch.rand(5, 784, generator=torch.Generator().manual_seed(2))
    for spherical in (False, True):
        paths = interpolations(model, x[:2], x[2:4], steps=6, spherical=spherical)
        assert paths.images.shape == (2, 6, 784) and paths.codes.shape == (2, 6, 3)
        torch.testing.assert_close(paths.codes[:, 0].float(), decoder_codes(model, x[:2]))
        torch.testing.assert_close(paths.codes[:, -1].float(), decoder_codes(model, x[2:4]))
        with torch.no_grad():
            torch.testing.assert_close(paths.images, model.likelihood.mean(paths.codes.float()))


def test_bernoulli_draws_sit_beside_the_means_of_the_same_z():
    model = tiny_model(latent_dims=(4,))
    means, draws = draws_beside_means(model, 500, torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.mean_image(model.sample_latent(500, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(means, expected)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    # 392 000 Bernoulli draws: their mean is the means' mean within a few standard errors (< 0.001).
    assert draws.mean().item() == pytest.approx(means.mean().item(), abs=0.004)
    again = draws_beside_means(model, 500, torch.Generator().manual_seed(3))
    assert torch.equal(again[1], draws)


def test_fixed_samples_leave_the_global_generator_and_the_training_mode_alone():
    model = tiny_model(latent_dims=(2,)).train()
    state = torch.get_rng_state()
    first = fixed_samples(model, 10, seed=7)
    assert model.training and torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, fixed_samples(model, 10, seed=7))
    model.eval()
    fixed_samples(model, 10, seed=7)
    assert not model.training


# --- the per-epoch strip, across --resume --------------------------------------------------------------


def test_the_epoch_strip_has_one_row_per_epoch_across_resume(tiny_idx_dir, tmp_path, capsys):
    data_dir = tiny_idx_dir(n_train=24, n_test=8)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*TINY, "--data-dir", str(data_dir), "--latent-dim", "2"]
    run_ok(["train", *common, "--epochs", "3", "--out", str(straight)], capsys)
    run_ok(["train", *common, "--epochs", "1", "--out", str(resumed)], capsys)
    images, epochs = read_epoch_samples(resumed / EPOCH_SAMPLES_NAME)
    assert epochs.tolist() == [1] and images.shape == (1, 10, 784) and images.dtype == np.uint8
    run_ok(["train", "--out", str(resumed), "--resume", "--epochs", "3", "--no-progress"], capsys)
    images, epochs = read_epoch_samples(resumed / EPOCH_SAMPLES_NAME)
    straight_images, straight_epochs = read_epoch_samples(straight / EPOCH_SAMPLES_NAME)
    assert epochs.tolist() == straight_epochs.tolist() == [1, 2, 3]
    assert np.array_equal(images, straight_images)
    assert len({row.tobytes() for row in images}) == 3  # the model changed between epochs
    assert (resumed / "training_strip.png").read_bytes()[:8] == PNG_MAGIC


# --- vaelab plot and the end of vaelab train -----------------------------------------------------------


def assert_pictures(directory):
    for name in FIGURES:
        path = directory / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
        assert image[..., :3].std() > 0.05, f"{name} is (nearly) constant"


@pytest.mark.parametrize("latent_dim", [2, 20])
def test_train_and_plot_write_every_figure(latent_dim, tiny_idx_dir, tmp_path, capsys):
    data_dir, run = tiny_idx_dir(n_train=24, n_test=20), tmp_path / "run"
    argv = ["train", *TINY, "--data-dir", str(data_dir), "--latent-dim", str(latent_dim), "--epochs", "2"]
    out = run_ok([*argv, "--out", str(run)], capsys)
    assert "manifold.png" in out and "training_strip.png" in out
    assert_pictures(run)
    before = {name: (run / name).read_bytes() for name in FIGURES}
    out = run_ok(["plot", str(run)], capsys)  # the same seed and images: the same figures
    assert {name: (run / name).read_bytes() for name in FIGURES} == before
    elsewhere = tmp_path / "figures" / "new"
    run_ok(["plot", str(run), "--out", str(elsewhere), "--spherical", "--seed", "3", "--split", "train"], capsys)
    assert_pictures(elsewhere)
    assert (elsewhere / "interpolations.png").read_bytes() != before["interpolations.png"]


def test_plot_refuses_what_is_not_a_run_in_one_line(tmp_path, capsys):
    run_refused(["plot", str(tmp_path / "missing")], capsys, "does not exist")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    run_refused(["plot", str(foreign)], capsys, "is not a vaelab run (no checkpoint.pt or config.json)")
    run_refused(["plot", str(foreign / "notes.txt")], capsys, "is not a directory")
    assert sorted(path.name for path in foreign.iterdir()) == ["notes.txt"]


# --- TensorBoard ---------------------------------------------------------------------------------------


def test_tensorboard_holds_every_metric_of_every_epoch(tiny_idx_dir, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data_dir, run = tiny_idx_dir(n_train=16, n_test=8), tmp_path / "run"
    argv = ["train", *TINY, "--data-dir", str(data_dir), "--latent-dim", "2", "--epochs", "2", "--out", str(run)]
    run_ok([*argv, "--tensorboard"], capsys)
    with open(run / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    measured = [name for name in rows[0] if name != "epoch" and np.isfinite(float(rows[0][name]))]
    assert {"train_loss", "test_loss", "test_rec", "test_kl"} <= set(measured)
    assert set(measured) <= set(events.Tags()["scalars"])
    for name in measured:
        scalars = events.Scalars(name)
        assert [event.step for event in scalars] == [1, 2], name
        expected = [float(row[name]) for row in rows]
        assert [event.value for event in scalars] == pytest.approx(expected, rel=1e-5, abs=1e-6), name
    assert [event.step for event in events.Images("samples")] == [1, 2]
    assert "tensorboard" not in json.loads((run / "config.json").read_text())  # an output choice, not a setting


def test_tensorboard_missing_fails_before_training_in_one_line(tiny_idx_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    data_dir, run = tiny_idx_dir(n_train=16, n_test=8), tmp_path / "run"
    argv = ["train", *TINY, "--data-dir", str(data_dir), "--epochs", "1", "--out", str(run), "--tensorboard"]
    line = run_refused(argv, capsys, '--tensorboard needs the tensorboard package: pip install "vaelab[tensorboard]"')
    assert line.startswith("vaelab train: error:")
    assert not run.exists()
