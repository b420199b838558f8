"""The report's explorer runs convolutional decoders (plain and residual) on colour, non-square images, for
every likelihood: the canvas must show the model's own E[x|h] to one level in each channel, and the op program
the page runs, replayed here in NumPy, must be the torch decoder."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from test_report import OpenedPage, browser, float32s  # noqa: F401  (browser is a fixture)
from vaelab.checkpoint import load_model
from vaelab.cli import main
from vaelab.config import ModelSpec
from vaelab.models import build_model
from vaelab.report.explorer import decoder_weights

CASES = {
    "resnet-bernoulli-colour": ["--network", "resnet", "--likelihood", "bernoulli"],
    "conv-logistic-colour": ["--network", "conv", "--likelihood", "logistic"],
    "resnet-mixture-colour": ["--network", "resnet", "--likelihood", "logistic-mixture", "--mixture-components", "3"],
}


def colour_folder(root, n=24, shape=(12, 10, 3)):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def perturb(model):
    """Give the zero-initialised residual branches weights, so that the test sees them."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "conv2" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def replay(ops, h):
    """The page's program in NumPy, float64: h (D,) -> parameters (M·S,)."""
    x, shape = np.asarray(h, dtype=np.float64), None
    for op in ops:
        if op["op"] == "linear":
            x = float32s(op["weight"]).reshape(op["shape"]) @ x + float32s(op["bias"])
        elif op["op"] == "reshape":
            shape = op["shape"]
            x = x.reshape(shape)
        elif op["op"] == "act":
            x = {"relu": lambda a: np.maximum(a, 0), "tanh": np.tanh}[op["name"]](x)
        elif op["op"] == "upsample":
            (h_in, w_in), (h_out, w_out) = x.shape[1:], op["size"]
            rows, columns = (np.arange(h_out) * h_in) // h_out, (np.arange(w_out) * w_in) // w_out
            x = x[:, rows][:, :, columns]
        elif op["op"] == "conv":
            weight = torch.from_numpy(float32s(op["weight"]).reshape(op["shape"]))
            out = torch.nn.functional.conv2d(
                torch.from_numpy(x)[None], weight, torch.from_numpy(float32s(op["bias"])), op["stride"], op["padding"]
            )
            x = out[0].numpy()
        elif op["op"] == "residual":
            x = x + replay(op["ops"], x).reshape(x.shape)
    return x.reshape(-1)


@pytest.mark.parametrize("network", ["conv", "resnet"])
def test_the_op_program_is_the_torch_decoder(network):
    torch.manual_seed(0)
    model = perturb(build_model(ModelSpec(network=network, image_shape=(3, 12, 10), channels=4, latent_dims=(2,))))
    model = model.double()
    program = decoder_weights(model)
    assert program["channels"] == 3 and program["positions"] == 120
    for h in ([0.3, -1.2], [2.0, 0.5]):
        with torch.no_grad():
            expected = model.likelihood.decoder(torch.tensor(h, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(replay(program["ops"], h), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", list(CASES.values()), ids=list(CASES))
def test_the_canvas_shows_a_conv_model_s_colour_means(browser, tmp_path, capsys, options):  # noqa: F811
    folder = colour_folder(tmp_path / "images")
    run_dir = tmp_path / "run"
    os.environ["VAELAB_DATA"] = str(tmp_path / "cache")
    try:
        common = ["--dataset", "folder", "--data-dir", str(folder), "--test-fraction", "0.25", "--channels", "4"]
        train = ["train", *common, "--latent-dim", "2", "--epochs", "1", "--batch-size", "6", "--no-progress"]
        assert main([*train, *options, "--out", str(run_dir)]) == 0
        model, _ = load_model(run_dir)
        # residual branches start at zero; give them weights so that the page must run them
        state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
        perturb(model)
        state["model"] = model.state_dict()
        torch.save(state, run_dir / "checkpoint.pt")
        assert main(["report", str(run_dir)]) == 0
    finally:
        del os.environ["VAELAB_DATA"]
    capsys.readouterr()
    model, _ = load_model(run_dir)
    opened = OpenedPage(browser, run_dir / "report.html")
    for u, v in [(0.0, 0.0), (1.5, -0.8), (-3.0, 2.5)]:
        point = opened.page.evaluate(f"window.decodeAt({u}, {v})")
        rgba = opened.page.evaluate(
            """() => {
                const canvas = document.getElementById("decoded");
                return [canvas.width, canvas.height,
                        Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data)];
            }"""
        )
        width, height, values = rgba
        assert (width, height) == (10, 12)
        canvas = np.asarray(values, dtype=np.float64).reshape(height, width, 4)[:, :, :3]
        with torch.no_grad():
            means = model.likelihood.mean(torch.tensor(point["h"], dtype=torch.float32)).double().numpy()
        expected = np.clip(means.reshape(3, height, width).transpose(1, 2, 0), 0, 1) * 255
        assert np.abs(canvas - expected).max() <= 1.0
    assert opened.errors == []
    opened.page.close()
