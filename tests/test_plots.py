"""Figures of a trained model: the arrays behind them (vaelab.visualize), the per-epoch strip, `vaelab plot`,
the figures at the end of `vaelab train` and its TensorBoard log, on tiny synthetic data; images of any
(C, H, W), grey or colour, square or not."""

import io

import csv
import json
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from conftest import run_ok, run_refused
from vaelab import plots
from vaelab.config import ModelSpec
from vaelab.errors import VaelabError
from vaelab.models import build_model
from vaelab.visualize import (
    EPOCH_SAMPLES_NAME,
    append_epoch_samples,
    decoder_codes,
    draws_beside_means,
    epoch_samples_shape,
    fixed_samples,
    interpolations,
    lerp,
    manifold,
    normal_quantiles,
    pictures,
    plane_coordinates,
    principal_plane,
    read_epoch_samples,
    slerp,
    to_uint8,
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


# --- images of any shape: grey or colour, square or not -----------------------------------------------

RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def colour_image(places, shape=(3, 4, 5)):
    """A black (H, W, 3) image with the given {(row, column): rgb}, and the same image flat in (C, H, W) order."""
    channels, height, width = shape
    picture = np.zeros((height, width, channels), dtype=np.float32)
    for (row, column), rgb in places.items():
        picture[row, column] = rgb
    return picture, picture.transpose(2, 0, 1).reshape(-1)


def tile_at(mosaic, index, columns, height, width, pad=2):
    row, column = divmod(index, columns)
    top, left = pad + row * (height + pad), pad + column * (width + pad)
    return mosaic[top : top + height, left : left + width]


def rendered_rgb(figure):
    """The figure drawn by Agg: (height, width, 3) uint8, top row first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def screen_pixel(figure, axes, row, column):
    """The rendered RGB (0..255) at the centre of mosaic pixel (row, column) of the axes' image."""
    buffer = rendered_rgb(figure)  # drawn first: the axes' aspect fixes where the image lies
    x, y = axes.transData.transform((column, row))
    return buffer[buffer.shape[0] - 1 - int(y), int(x)]


def test_the_flat_channel_first_vector_is_shown_as_height_width_channel():
    flat = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 24) / 100  # (n, C·H·W)
    shown = plots.display_images(flat, (3, 2, 4))
    assert shown.shape == (2, 2, 4, 3)
    for n, c, h, w in ((0, 0, 0, 0), (1, 2, 1, 3), (0, 1, 1, 2)):
        assert shown[n, h, w, c] == flat[n, c * 8 + h * 4 + w]
    grey = plots.display_images(np.full((3, 12), 1.5), (1, 3, 4))
    assert grey.shape == (3, 3, 4) and (grey == 1.0).all()  # clipped to [0, 1], the channel squeezed
    assert np.array_equal(plots.display_images(np.full((1, 12), 255, np.uint8), (3, 4)), np.ones((1, 3, 4)))
    assert plots.channels_first((20, 30)) == (1, 20, 30)  # the old (H, W): grey
    with pytest.raises(VaelabError, match="C = 1 .grey. or 3 .RGB."):
        plots.display_images(np.zeros((1, 8)), (2, 2, 2))
    with pytest.raises(VaelabError, match="not an image"):
        plots.image_grid(np.zeros((2, 50)), image_shape=None)


def test_a_colour_grid_puts_red_green_and_blue_where_the_image_has_them():
    first, first_flat = colour_image({(0, 0): RED, (1, 2): GREEN, (3, 4): BLUE})
    second, second_flat = colour_image({(0, 4): BLUE, (2, 1): RED})
    figure = plots.image_grid(np.stack((first_flat, second_flat)), columns=2, image_shape=(3, 4, 5))
    axes = figure.axes[0]
    mosaic = axes.images[0].get_array()
    assert mosaic.shape == (2 + 4 + 2, 2 + 2 * (5 + 2), 3)
    assert np.array_equal(tile_at(mosaic, 0, 2, 4, 5), first)
    assert np.array_equal(tile_at(mosaic, 1, 2, 4, 5), second)
    # Rendered: pure colours at those pixels (the first image's top left is mosaic pixel (2, 2)).
    assert screen_pixel(figure, axes, 2 + 0, 2 + 0).tolist() == [255, 0, 0]
    assert screen_pixel(figure, axes, 2 + 1, 2 + 2).tolist() == [0, 255, 0]
    assert screen_pixel(figure, axes, 2 + 3, 2 + 4).tolist() == [0, 0, 255]
    assert screen_pixel(figure, axes, 2 + 2, 2 + 7 + 1).tolist() == [255, 0, 0]
    assert screen_pixel(figure, axes, 2 + 1, 2 + 1).tolist() == [0, 0, 0]


def test_a_non_square_grey_image_round_trips_through_the_grid():
    images = np.random.default_rng(0).uniform(0, 1, (3, 20 * 30)).astype(np.float32)
    for shape in ((1, 20, 30), (20, 30)):
        figure = plots.image_grid(images, columns=2, image_shape=shape)
        image = figure.axes[0].images[0]
        mosaic = image.get_array()
        assert mosaic.shape == (2 + 2 * (20 + 2), 2 + 2 * (30 + 2))
        for index in range(3):
            assert np.array_equal(tile_at(mosaic, index, 2, 20, 30), images[index].reshape(20, 30))
        assert image.get_cmap().name == "gray" and image.get_clim() == (0.0, 1.0)
    grid = plots.reconstruction_grid(images[:2], 1 - images[:2], columns=2, image_shape=(1, 20, 30))
    mosaic = grid.axes[0].images[0].get_array()
    assert np.array_equal(tile_at(mosaic, 2, 2, 20, 30), 1 - images[0].reshape(20, 30))  # second row: reconstructions


def test_mnist_keeps_its_grey_figures_and_their_sizes():
    images = np.random.default_rng(1).uniform(0, 1, (64, 784)).astype(np.float32)
    figure = plots.image_grid(images, 8, title="t")
    assert tuple(figure.get_size_inches()) == pytest.approx((6.0, 6.4))  # 0.75 in per image, as always
    mosaic = figure.axes[0].images[0].get_array()
    assert mosaic.ndim == 2 and np.array_equal(tile_at(mosaic, 9, 8, 28, 28), images[9].reshape(28, 28))
    strip = plots.epoch_strip(to_uint8(torch.from_numpy(images[:30])).numpy().reshape(3, 10, 784), [1, 2, 3])
    assert tuple(strip.get_size_inches()) == pytest.approx((5.9, 2.2))


@pytest.mark.parametrize("figure_of", ["manifold", "interpolations", "draws", "strip"])
def test_every_model_figure_draws_colour_as_rgb(figure_of):
    picture, flat = colour_image({(0, 0): RED, (1, 2): GREEN, (3, 4): BLUE}, shape=(3, 4, 6))
    shape, others = (3, 4, 6), np.full((5, 72), 0.25, dtype=np.float32)
    if figure_of == "manifold":
        images = np.concatenate((flat[None], others[:3])).reshape(2, 2, 72)
        figure, pad = plots.manifold_grid(images, [0.0, 1.0], [1.0, 0.0], "x", "y", "t", image_shape=shape), 0
    elif figure_of == "interpolations":
        figure = plots.interpolation_rows(flat[None], others[None, :3], others[:1], [0, 0.5, 1], "t", shape)
        pad = 2
    elif figure_of == "draws":
        figure, pad = plots.draws_beside_means(flat[None], flat[None] * 2, "d", columns=1, image_shape=shape), 2
    else:
        uint8 = to_uint8(torch.from_numpy(np.stack((np.concatenate((flat[None], others[:1])),) * 3))).numpy()
        figure, pad = plots.epoch_strip(uint8, [1, 2, 3], image_shape=shape), 2
    for axes in figure.axes:
        mosaic = axes.images[0].get_array()
        assert mosaic.ndim == 3 and mosaic.shape[2] == 3
        np.testing.assert_allclose(tile_at(mosaic, 0, 2, 4, 6, pad=pad), picture)  # draws: 2x clipped to [0, 1]


def test_large_images_get_their_pixels_and_huge_grids_are_capped_and_shrunk():
    colour = plots.image_grid(np.zeros((64, 3 * 64 * 64), np.float32), 8, image_shape=(3, 64, 64))
    assert colour.get_size_inches()[0] * colour.dpi >= 8 * (64 + 2)  # a screen pixel for each image pixel
    assert colour.axes[0].images[0].get_array().shape == (8 * 66 + 2, 8 * 66 + 2, 3)  # not shrunk
    images = np.zeros((64, 3, 256, 256), np.float32)
    images[:, 0, :128] = 1.0  # red top halves
    huge = plots.image_grid(images.reshape(64, -1), 8, image_shape=(3, 256, 256))
    width, height = huge.get_size_inches()
    assert max(width, height) <= plots.MAX_FIGURE_INCHES + 1e-9
    mosaic = huge.axes[0].images[0].get_array()
    assert mosaic.shape == (8 * (128 + 2) + 2, 8 * (128 + 2) + 2, 3)  # shrunk 2x by block means
    assert np.array_equal(tile_at(mosaic, 5, 8, 128, 128)[:64, :, 0], np.ones((64, 128)))
    assert width * huge.dpi >= mosaic.shape[1] - 1  # each shown pixel still gets a screen pixel
    assert np.array_equal(plots.shrink(np.arange(16.0).reshape(1, 4, 4), 2), [[[2.5, 4.5], [10.5, 12.5]]])
    assert plots.shrink(np.ones((1, 5, 3, 3)), 2).shape == (1, 3, 2, 3)  # partial blocks repeat the edge


def test_epoch_samples_store_their_image_shape_and_read_old_files(tmp_path):
    path = tmp_path / EPOCH_SAMPLES_NAME
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 256, (10, 3 * 16 * 16), dtype=torch.uint8, generator=generator) for _ in range(3)]
    for epoch, row in enumerate(rows, start=1):
        append_epoch_samples(path, epoch, row, image_shape=(3, 16, 16))
    images, epochs = read_epoch_samples(path)
    assert images.shape == (3, 10, 768) and epochs.tolist() == [1, 2, 3]
    assert np.array_equal(images, torch.stack(rows).numpy())
    assert epoch_samples_shape(path) == (3, 16, 16)
    append_epoch_samples(path, 2, rows[0], image_shape=(3, 16, 16))  # resumed from epoch 1: epoch 3 goes
    assert read_epoch_samples(path)[1].tolist() == [1, 2]
    append_epoch_samples(path, 3, rows[0], image_shape=(3, 8, 32))  # another shape: a fresh strip
    assert read_epoch_samples(path)[1].tolist() == [3] and epoch_samples_shape(path) == (3, 8, 32)
    with pytest.raises(VaelabError, match="not images of shape"):
        append_epoch_samples(path, 4, rows[0], image_shape=(1, 16, 16))

    old = tmp_path / "old.npz"  # written before shapes were stored: no image_shape key
    np.savez(old, images=np.zeros((2, 10, 784), np.uint8), epochs=np.array([1, 2]))
    assert epoch_samples_shape(old) == (1, 28, 28) and read_epoch_samples(old)[0].shape == (2, 10, 784)
    append_epoch_samples(old, 3, torch.zeros(10, 784, dtype=torch.uint8), image_shape=(1, 28, 28))
    assert read_epoch_samples(old)[1].tolist() == [1, 2, 3]  # the old strip continues
    np.savez(old, images=np.zeros((1, 10, 400), np.uint8), epochs=np.array([1]))
    assert epoch_samples_shape(old) == (1, 20, 20)
    flat = tmp_path / "flat.npz"  # a flat vector that is not an image
    append_epoch_samples(flat, 1, torch.zeros(10, 50, dtype=torch.uint8))
    assert epoch_samples_shape(flat) is None and read_epoch_samples(flat)[0].shape == (1, 10, 50)
    assert epoch_samples_shape(tmp_path / "absent.npz") is None


def test_write_figures_draws_every_figure_of_a_colour_model(tmp_path):
    model = tiny_model(image_shape=(3, 8, 8))
    generator = torch.Generator().manual_seed(0)
    x, labels = torch.rand(20, 192, generator=generator), torch.randint(0, 10, (20,), generator=generator)
    arrays = pictures(model, x, labels, seed=0, grid=5, pairs=3, steps=4, draws=8)
    assert arrays.image_shape == (3, 8, 8)
    strip = (to_uint8(torch.rand(3, 10, 192, generator=generator)).numpy(), np.array([1, 2, 3]))
    written = plots.write_figures(arrays, tmp_path, strip=strip)
    assert sorted(path.name for path in written) == sorted(FIGURES)
    assert_pictures(tmp_path)
    for name in ("manifold.png", "draws.png", "training_strip.png"):
        rgb = imread(tmp_path / name)[..., :3]
        assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 0.1).any(), f"{name} has no colour"


def test_inputs_that_are_not_an_image_get_the_scatter_alone(tmp_path):
    model = tiny_model(input_dim=50)
    assert model.spec.shape is None
    arrays = pictures(model, torch.rand(12, 50), torch.arange(12) % 3, seed=0, grid=3, pairs=2, steps=3, draws=4)
    written = plots.write_figures(arrays, tmp_path, strip=(np.zeros((1, 10, 50), np.uint8), np.array([1])))
    assert [path.name for path in written] == ["latent_scatter.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latent_scatter.png"]


def test_tensorboard_logs_a_colour_row_of_samples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vaelab.cli.train import _EpochRecorder

    model = tiny_model(image_shape=(3, 8, 6))
    recorder = _EpochRecorder(tmp_path, seed=0, tensorboard=True)
    try:
        for epoch in (1, 2):
            recorder({"epoch": epoch, "train_loss": 1.0 / epoch}, model)
    finally:
        recorder.close()
    assert epoch_samples_shape(tmp_path / EPOCH_SAMPLES_NAME) == (3, 8, 6)
    images, epochs = read_epoch_samples(tmp_path / EPOCH_SAMPLES_NAME)
    assert images.shape == (2, 10, 144) and epochs.tolist() == [1, 2]
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    logged = events.Images("samples")
    assert [event.step for event in logged] == [1, 2]
    assert (logged[0].height, logged[0].width) == (2 + 8 + 2, 2 + 10 * (6 + 2))
    decoded = imread(io.BytesIO(logged[-1].encoded_image_string), format="png")
    assert decoded.shape[:2] == (12, 82) and decoded.shape[2] in (3, 4)
    expected = plots.tile(plots.display_images(images[-1], (3, 8, 6)), 10, pad_value=0.5)
    np.testing.assert_allclose(decoded[..., :3], expected, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("spec", [dict(image_shape=(3, 8, 8)), dict(input_dim=50)], ids=["colour", "not-an-image"])
def test_the_end_of_training_draws_in_the_models_shape(spec, tmp_path, capsys):
    from vaelab.cli.train import _write_pictures
    from vaelab.config import TrainConfig

    model = tiny_model(**spec)
    pixels = model.spec.input_dim
    config = TrainConfig(model=model.spec, seed=3)
    history = [
        {"epoch": epoch, "train_loss": 9.0 - epoch, "test_loss": 9.5 - epoch, "test_kl": 1.0} for epoch in (1, 2)
    ]
    generator = torch.Generator().manual_seed(0)
    test_x, labels = torch.rand(40, pixels, generator=generator), torch.randint(0, 10, (40,), generator=generator)
    written = _write_pictures(model, history, test_x, tmp_path, config, labels=labels)
    if model.spec.shape is None:
        assert written == ["loss.png", "latent_scatter.png"]
        assert "no image figures: the model's 50 inputs are not an image" in capsys.readouterr().out
        return
    assert written == ["samples.png", "reconstructions.png", "loss.png", *FIGURES[:4]]  # no strip kept
    for name in ("samples.png", "reconstructions.png"):
        rgb = imread(tmp_path / name)[..., :3]
        assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 0.1).any(), f"{name} has no colour"


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 40])
def test_loss_curves_tick_whole_epochs_only(epochs):
    history = [
        {"epoch": e, "train_loss": 100.0 - e, "test_loss": 101.0 - e, "test_kl": 20.0 + e} for e in range(1, epochs + 1)
    ]
    figure = plots.loss_curves(history)
    figure.canvas.draw()
    axes = figure.axes[0]
    low, high = axes.get_xlim()
    ticks = [tick for tick in axes.get_xticks() if low <= tick <= high]
    assert ticks and all(float(tick).is_integer() for tick in ticks)


@pytest.mark.parametrize("identity", [False, True])
def test_the_plane_of_one_code_has_no_spread_and_passes_through_it(identity):
    code = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)  # one test image: N - 1 = 0
    plane = principal_plane(code, identity=identity)
    assert torch.equal(plane.variances, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(plane.directions @ plane.directions.T, torch.eye(3, dtype=torch.float64))
    if not identity:
        torch.testing.assert_close(plane.point(torch.zeros(3, dtype=torch.float64)), code[0])
