"""The report's explorer runs every decoder vaelab builds (MLP, convolutional, residual) on grey or colour images of
any H x W, with every likelihood's mean.

Three references: the op program, replayed in plain NumPy (float64), must be the torch decoder (no browser: a
serialization mistake fails here with a readable diff); in headless Chromium the page's own program and output link
must give the torch decoder's parameters and the likelihood's E[x|h] in float64 to rounding; and the canvas must show
the model's own float32 `mean_image(z)` to one level in each channel.
"""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

import vaelab
from test_report import OpenedPage, browser, float32s  # noqa: F401  (browser is a fixture)
from vaelab.checkpoint import load_model
from vaelab.cli import main
from vaelab.config import ModelSpec, TrainConfig
from vaelab.errors import VaelabError
from vaelab.models import build_model
from vaelab.nn import resolutions
from vaelab.report import summary
from vaelab.report.explorer import decoder_weights, explorer_data
from vaelab.report.page import ReportContent, render

# Tiny models, each with something the page must get right: residual cells, colour, a non-square image whose
# upsampling is not a doubling (12 x 10 -> 6 x 5), every likelihood's output link, every activation.
MODELS = {
    "resnet-bernoulli-colour": dict(network="resnet", image_shape=(3, 12, 10), likelihood="bernoulli"),
    "conv-logistic-grey": dict(network="conv", image_shape=(1, 12, 12), likelihood="logistic"),
    "conv-logistic-colour-tanh": dict(
        network="conv", image_shape=(3, 10, 12), likelihood="logistic", activation="tanh"
    ),
    "resnet-mixture-colour": dict(
        network="resnet", image_shape=(3, 12, 10), likelihood="logistic-mixture", mixture_components=3
    ),
    "resnet-mixture-grey-elu": dict(
        network="resnet", image_shape=(1, 9, 14), likelihood="logistic-mixture", mixture_components=2, activation="elu"
    ),
    "conv-gaussian-softplus-depth2": dict(
        network="conv", image_shape=(1, 17, 11), likelihood="gaussian", activation="softplus", depth=2
    ),
    "resnet-gelu-two-levels": dict(
        network="resnet", image_shape=(2, 19, 17), likelihood="bernoulli", activation="gelu"
    ),
    "mlp-mnist": dict(network="mlp", hidden=(16,), depth=2, activation="tanh"),
    "mlp-flat-strip": dict(network="mlp", input_dim=30, hidden=(8,), likelihood="logistic"),
}
BROWSER_MODELS = ["resnet-bernoulli-colour", "conv-logistic-grey", "resnet-mixture-colour", "mlp-mnist"]
BROWSER_MODELS += ["conv-gaussian-softplus-depth2", "resnet-gelu-two-levels", "mlp-flat-strip"]


def tiny_model(name, seed=0):
    """The model MODELS[name] (latent 2-D, 4 channels) with every weight drawn, residual branches included."""
    torch.manual_seed(seed)
    options = {"channels": 4, "latent_dims": (2,), **MODELS[name]}
    return perturb(build_model(ModelSpec(**options))).eval()


def perturb(model, scale=0.3):
    """Residual branches start at zero (each cell is the identity); give them weights, so that tests see them."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "conv2" in name:
                parameter.add_(scale * torch.randn_like(parameter))
    return model


# --- the op program in NumPy ------------------------------------------------------------------


def gelu(a):
    return 0.5 * a * (1 + np.vectorize(math.erf)(a / math.sqrt(2)))


NUMPY_ACTIVATIONS = {
    "relu": lambda a: np.maximum(a, 0),
    "tanh": np.tanh,
    "elu": lambda a: np.where(a > 0, a, np.expm1(np.minimum(a, 0))),
    "softplus": lambda a: np.where(a > 20, a, np.log1p(np.exp(np.minimum(a, 20)))),
    "gelu": gelu,
}


def nearest_sources(size, out_size):
    """torch's nearest upsampling: output index i reads min(size - 1, floor(i * scale)), all in float32."""
    scale = np.float32(size) / np.float32(out_size)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(int), size - 1)


def conv2d(x, weight, bias, stride, padding):
    """x (C_in, H, W), weight (C_out, C_in, kh, kw), zero padding -> (C_out, H', W'): the sum over kernel offsets."""
    (sy, sx), (py, px), (_, _, kh, kw) = stride, padding, weight.shape
    padded = np.pad(x, ((0, 0), (py, py), (px, px)))
    out_h, out_w = (padded.shape[1] - kh) // sy + 1, (padded.shape[2] - kw) // sx + 1
    out = np.broadcast_to(bias[:, None, None], (weight.shape[0], out_h, out_w)).copy()
    for dy in range(kh):
        for dx in range(kw):
            window = padded[:, dy : dy + sy * (out_h - 1) + 1 : sy, dx : dx + sx * (out_w - 1) + 1 : sx]
            out += np.einsum("oi,ihw->ohw", weight[:, :, dy, dx], window)
    return out


def replay(ops, x):
    """The page's program in NumPy, float64: x (D,) -> what the ops give (the decoder's (M·S,) parameters)."""
    for op in ops:
        kind = op["op"]
        if kind == "linear":
            x = float32s(op["weight"]).reshape(op["shape"]) @ x.reshape(-1) + float32s(op["bias"])
        elif kind == "conv2d":
            weight = float32s(op["weight"]).reshape(op["shape"])
            x = conv2d(x, weight, float32s(op["bias"]), op["stride"], op["padding"])
        elif kind == "act":
            x = NUMPY_ACTIVATIONS[op["name"]](x)
        elif kind == "reshape":
            x = x.reshape(op["shape"])
        elif kind == "upsample":
            (_, height, width), (out_height, out_width) = x.shape, op["size"]
            x = x[:, nearest_sources(height, out_height)][:, :, nearest_sources(width, out_width)]
        elif kind == "residual":
            x = x + replay(op["ops"], x)
        else:
            raise AssertionError(f"unknown op {kind!r}")
    return x


def torch_float64(module):
    """The same module in float64: its float32 weights exactly, so only the arithmetic's rounding differs."""
    return copy.deepcopy(module).double()


def test_nearest_sources_are_torch_s():
    # the exact floor(i * in / out) picks another pixel at some sizes (2 -> 82, 6 -> 74): torch rounds in float32
    # (for float32 images, which models are; its float64 kernel for more than one row rounds otherwise)
    for size, out_size in [(7, 14), (5, 10), (6, 12), (7, 13), (2, 82), (6, 74), (3, 10), (4, 4)]:
        x = torch.arange(2 * size, dtype=torch.float32).reshape(1, 1, 2, size)
        picked = nn.functional.interpolate(x, size=(2, out_size), mode="nearest")[0, 0, 0].long().numpy()
        np.testing.assert_array_equal(nearest_sources(size, out_size), picked)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_op_program_is_the_torch_decoder(name):
    model = tiny_model(name)
    program = decoder_weights(model)
    decoder = model.likelihood.decoder
    channels, height, width = model.spec.shape or (1, 1, model.spec.input_dim)
    assert (program["channels"], program["positions"]) == (channels, height * width)
    assert program["likelihood"] == model.spec.likelihood
    kinds = [op["op"] for op in program["ops"]]
    if model.spec.network == "mlp":
        assert kinds == ["linear", "act"] * model.spec.depth + ["linear"]
    else:
        assert kinds[:3] == ["linear", "act", "reshape"] and kinds[-1] == "conv2d"
        assert ("residual" in kinds) == (model.spec.network == "resnet")
        assert kinds.count("upsample") == len(resolutions(height, width)) - 1
    for h in ([0.3, -1.2], [2.0, 0.5], [-3.0, 2.5]):
        with torch.no_grad():
            expected = torch_float64(decoder)(torch.tensor(h, dtype=torch.float64)).numpy()
        replayed = replay(program["ops"], np.asarray(h, dtype=np.float64)).reshape(-1)
        assert replayed.shape == expected.shape
        np.testing.assert_allclose(replayed, expected, rtol=0, atol=1e-10)


def test_a_residual_cell_is_one_op_holding_its_branch():
    model = tiny_model("resnet-gelu-two-levels")  # 19 x 17 -> 10 x 9 -> 5 x 5, with 4 and 8 channels
    ops = decoder_weights(model)["ops"]
    residual = [op for op in ops if op["op"] == "residual"]
    assert len(residual) == 2  # depth 1 at each level but the full resolution
    assert [op["op"] for op in residual[0]["ops"]] == ["act", "conv2d", "act", "conv2d"]
    assert residual[0]["ops"][1]["shape"] == [8, 8, 3, 3] and residual[1]["ops"][3]["shape"] == [4, 4, 3, 3]
    assert residual[0]["ops"][1]["stride"] == [1, 1] and residual[0]["ops"][1]["padding"] == [1, 1]
    assert [op["size"] for op in ops if op["op"] == "upsample"] == [[10, 9], [19, 17]]
    assert ops[2] == {"op": "reshape", "shape": [8, 5, 5]}


def test_a_decoder_vaelab_does_not_build_is_refused_in_one_line():
    for swap in (
        lambda decoder: setattr(decoder.trunk, "0", nn.LeakyReLU()),
        lambda decoder: setattr(decoder, "head", nn.Conv2d(4, 1, 3, padding=2, dilation=2)),
        lambda decoder: setattr(decoder.trunk, "0", nn.Softplus(beta=2.0)),
    ):
        model = tiny_model("conv-logistic-grey")
        swap(model.likelihood.decoder)
        with pytest.raises(VaelabError) as error:
            decoder_weights(model)
        message = str(error.value)
        assert "\n" not in message and "runs the MLP and convolutional decoders vaelab builds" in message
    model = tiny_model("conv-logistic-grey")
    model.likelihood.kind = "poisson"
    with pytest.raises(VaelabError, match="shows the means of the bernoulli, gaussian, logistic, logistic-mixture"):
        decoder_weights(model)


# --- in the browser ------------------------------------------------------------------------------


def explorer_page(model, path):
    """The report page of `model` alone (no run: the plane spread over draws from the prior), written to path."""
    explorer = explorer_data(model, TrainConfig(model=model.spec), source="prior")
    content = ReportContent(path.stem, str(path.parent), "", "", {}, None, [], None, None, [], explorer)
    path.write_text(render(content, vaelab.__version__))
    return path


def python_mean(model, parameters):
    """E[x|h] from given decoder parameters (M·S,) by vaelab's own likelihood, in float64."""
    likelihood = torch_float64(model.likelihood)
    likelihood.decoder = nn.Identity()
    with torch.no_grad():
        return likelihood.mean(torch.as_tensor(parameters, dtype=torch.float64)).numpy()


def canvas(opened):
    """The decoded image as the canvas holds it: (H, W, 3) levels 0..255, after checking alpha is opaque."""
    width, height, values = opened.page.evaluate(
        """() => {
            const canvas = document.getElementById("decoded");
            const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            return [canvas.width, canvas.height, Array.from(pixels)];
        }"""
    )
    rgba = np.asarray(values, dtype=np.float64).reshape(height, width, 4)
    assert (rgba[:, :, 3] == 255).all()
    return rgba[:, :, :3]


def expected_canvas(means, shape):
    """255 E[x|h] (C·H·W,) as the page draws it, (H, W', 3): RGB for C = 3, else grey tiles (H, C·W) side by side."""
    channels, height, width = shape
    levels = np.clip(means.reshape(shape), 0, 1) * 255
    if channels == 3:
        return levels.transpose(1, 2, 0)
    tiles = levels.transpose(1, 0, 2).reshape(height, channels * width)  # channel c at columns c·W .. c·W + W - 1
    return np.repeat(tiles[:, :, None], 3, axis=2)


@pytest.mark.parametrize("name", BROWSER_MODELS)
def test_the_page_decodes_as_the_model(browser, tmp_path, name):  # noqa: F811
    model = tiny_model(name)
    channels, height, width = model.spec.shape or (1, 1, model.spec.input_dim)
    opened = OpenedPage(browser, explorer_page(model, tmp_path / "page.html"))
    decoder = torch_float64(model.likelihood.decoder)
    # gelu's erf is a fit with relative error 1.2e-7 in the page; everything else is float64 to rounding
    atol = 1e-5 if model.spec.activation == "gelu" else 1e-9
    for u, v in [(0.0, 0.0), (1.5, -0.8), (-3.0, 2.5)]:
        point = opened.page.evaluate(f"window.decodeAt({u}, {v})")
        assert point["h"] == [u, v]
        # the page's program: the torch decoder's parameters
        parameters = np.asarray(opened.page.evaluate("h => window.explorerDecoder.parameters(h)", point["h"]))
        with torch.no_grad():
            expected = decoder(torch.tensor(point["h"], dtype=torch.float64)).numpy()
        np.testing.assert_allclose(parameters, expected, rtol=0, atol=atol)
        # the canvas: the model's own float32 E[x|z] (z = h here), each channel to one level of 255
        with torch.no_grad():
            means = model.mean_image(torch.tensor(point["h"], dtype=torch.float32)).double().numpy()
        assert np.abs(canvas(opened) - expected_canvas(means, (channels, height, width))).max() <= 1.0
    assert opened.errors == [] and opened.requests == [opened.url]
    opened.page.close()


@pytest.mark.parametrize("name", ["conv-logistic-colour-tanh", "resnet-mixture-colour", "resnet-mixture-grey-elu"])
def test_the_page_s_output_link_is_the_likelihood_s_mean(browser, tmp_path, name):  # noqa: F811
    """E[x|h] from parameters far into every regime: locations beyond [-1, 1], scales at and below the floor e^-7,
    huge scales, saturated channel couplings and mixture logits."""
    model = tiny_model(name)
    opened = OpenedPage(browser, explorer_page(model, tmp_path / "page.html"))
    size = decoder_weights(model)["positions"] * model.likelihood.per_position(model.spec.shape[0], model.spec)
    rng = np.random.default_rng(1)
    for spread in (0.3, 3.0, 12.0):
        parameters = spread * rng.standard_normal(size)
        page_means = np.asarray(opened.page.evaluate("p => window.explorerDecoder.means(p)", parameters.tolist()))
        np.testing.assert_allclose(page_means, python_mean(model, parameters), rtol=0, atol=1e-12)
    assert opened.errors == []
    opened.page.close()


class Program(nn.Sequential):
    """A decoder of hand-picked ops; `head` is where the prior reads the decoder's dtype and device."""

    @property
    def head(self):
        return self[0]


def test_the_page_upsamples_as_torch_at_awkward_sizes(browser, tmp_path):  # noqa: F811
    """A hand-written program (linear, reshape to 2 x 6, nearest to 82 x 74), where the exact floor(i * in / out)
    and torch's index in float32 differ: the page must pick the pixels of the float32 model."""
    torch.manual_seed(0)
    spec = ModelSpec(latent_dims=(2,), hidden=(4,), input_dim=82 * 74, image_shape=(1, 82, 74), likelihood="gaussian")
    model = build_model(spec)
    model.likelihood.decoder = Program(nn.Linear(2, 12), nn.Unflatten(1, (1, 2, 6)), nn.Upsample((82, 74)))
    opened = OpenedPage(browser, explorer_page(model, tmp_path / "page.html"))
    h = [0.7, -1.9]
    parameters = np.asarray(opened.page.evaluate("h => window.explorerDecoder.parameters(h)", h))
    with torch.no_grad():
        expected = model.likelihood.decoder(torch.tensor([h])).double().numpy()
    np.testing.assert_allclose(parameters, expected.reshape(-1), rtol=0, atol=1e-6)  # float32's rounding
    assert opened.errors == []
    opened.page.close()


# --- end to end ----------------------------------------------------------------------------------


def test_vaelab_report_on_a_conv_run_of_the_python_api(browser, tmp_path, capsys):  # noqa: F811
    """vaelab.train writes checkpoint.pt and metrics.csv only (no config.json, data in memory): the report still
    opens, its plane spread over draws from the prior, and shows the model's means."""
    torch.manual_seed(0)
    train_x, test_x = (torch.rand(64, 64) > 0.5).float(), (torch.rand(32, 64) > 0.5).float()
    spec = ModelSpec(network="conv", image_shape=(1, 8, 8), channels=4, latent_dims=(2,))
    run_dir = tmp_path / "run"
    vaelab.train(TrainConfig(model=spec, epochs=1, batch_size=16), train_x, test_x, run_dir, progress=False)
    assert not (run_dir / "config.json").exists()
    assert main(["report", str(run_dir)]) == 0
    assert f"wrote {run_dir / 'report.html'}" in capsys.readouterr().out
    model, _ = load_model(run_dir)
    opened = OpenedPage(browser, run_dir / "report.html")
    assert "trained through the Python API" in opened.page.locator("#explorer-section").inner_text()
    assert "data given as tensors" in opened.page.locator("header .summary").inner_text()
    assert opened.explorer_data()["points"]["source"] == "prior"
    for u, v in [(0.4, -0.3), (-2.0, 1.0)]:
        point = opened.page.evaluate(f"window.decodeAt({u}, {v})")
        with torch.no_grad():
            means = model.mean_image(torch.tensor(point["h"], dtype=torch.float32)).double().numpy()
        assert np.abs(canvas(opened) - expected_canvas(means, (1, 8, 8))).max() <= 1.0
    assert opened.errors == [] and opened.requests == [opened.url]
    opened.page.close()


def test_a_colour_run_of_the_command_line_is_reported(browser, tmp_path, capsys, monkeypatch):  # noqa: F811
    """`vaelab train` on a folder of colour PNGs (resnet, PixelCNN++'s mixture), then `vaelab report`."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    options = ["--dataset", "folder", "--data-dir", str(folder), "--test-fraction", "0.25", "--channels", "4"]
    options += ["--network", "resnet", "--likelihood", "logistic-mixture", "--mixture-components", "3"]
    options += ["--latent-dim", "2", "--epochs", "1", "--batch-size", "6", "--no-progress", "--out", str(run_dir)]
    assert main(["train", *options]) == 0
    # residual branches start at zero; give them weights, so that the page must run them
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    model, _ = load_model(run_dir)
    state["model"] = perturb(model).state_dict()
    torch.save(state, run_dir / "checkpoint.pt")
    assert main(["report", str(run_dir)]) == 0
    capsys.readouterr()
    model, _ = load_model(run_dir)
    opened = OpenedPage(browser, run_dir / "report.html")
    assert opened.explorer_data()["points"]["source"] == "test"
    for u, v in [(0.0, 0.0), (1.5, -0.8)]:
        point = opened.page.evaluate(f"window.decodeAt({u}, {v})")
        with torch.no_grad():
            means = model.mean_image(torch.tensor(point["h"], dtype=torch.float32)).double().numpy()
        assert np.abs(canvas(opened) - expected_canvas(means, (3, 12, 10))).max() <= 1.0
    assert opened.errors == []
    opened.page.close()


def test_the_summary_names_the_network_and_the_likelihood():
    spec = ModelSpec(network="resnet", image_shape=(3, 12, 10), channels=4, latent_dims=(2,))
    spec = dataclasses.replace(spec, likelihood="logistic-mixture", mixture_components=3)
    line = summary(TrainConfig(model=spec), [{"epoch": "1", "test_loss": "812.5", "test_bpd": "3.25"}])
    assert "resnet (4 channels, depth 1, relu)" in line
    assert "mixture of 3 discretized logistics" in line and "(3 x 12 x 10)" in line
    assert "test -ELBO 812.50 nats per image (3.250 bits/dim)" in line
