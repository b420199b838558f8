"""`vaelab report`: the page in a real browser (headless Chromium through Playwright's sync API).

The page must load with no console error and no request but its own file; the pointer must change
the decoded image; and the image the page's JavaScript decoder draws must be the model's own
E[x|h] (torch, float32) to within one grey level, for every activation the decoder may use.
"""

import base64
import html
import re
import shutil

import numpy as np
import pytest
import torch

from vaelab import data
from vaelab.checkpoint import load_model
from vaelab.cli import main
from vaelab.report import build_report
from vaelab.visualize import decoder_codes, principal_plane

TINY = ["--dataset", "idx", "--hidden", "16", "--epochs", "1", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (Debian's binary) for the module's tests."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no Chromium: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no playwright: pip install playwright")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable)
        yield chromium
        chromium.close()


def make_run(tiny_idx_dir, tmp_path, capsys, name="run", options=("--latent-dim", "2")):
    """A one-epoch run on tiny random IDX data with its report.html written; -> the run directory."""
    data_dir = tiny_idx_dir(n_train=24, n_test=40)
    run_dir = tmp_path / name
    assert main(["train", *TINY, "--data-dir", str(data_dir), *options, "--out", str(run_dir)]) == 0
    assert main(["report", str(run_dir)]) == 0
    assert f"wrote {run_dir / 'report.html'}" in capsys.readouterr().out
    return run_dir


class OpenedPage:
    """A report opened in a fresh tab, with its console errors and every URL it requested."""

    def __init__(self, browser, path):
        self.errors, self.requests = [], []
        self.page = browser.new_page()
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.url = path.as_uri()
        self.page.goto(self.url)
        self.page.wait_for_function("window.explorerReady === true", timeout=10_000)

    def pixels(self) -> np.ndarray:
        """The decoded grey image's levels as the canvas holds them, (P,) in 0..255 (checked grey and opaque)."""
        rgba = self.page.evaluate(
            """() => {
                const canvas = document.getElementById("decoded");
                return Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data);
            }"""
        )
        rgba = np.asarray(rgba, dtype=np.float64).reshape(-1, 4)
        assert (rgba[:, :3] == rgba[:, :1]).all() and (rgba[:, 3] == 255).all()  # R = G = B, as MNIST always looked
        return rgba[:, 0]

    def explorer_data(self) -> dict:
        return self.page.evaluate("() => JSON.parse(document.getElementById('explorer-data').textContent)")


def float32s(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)


def expected_levels(model, h) -> np.ndarray:
    """255 E[x|h] by the model itself, in float32 as it runs (a Gaussian mean clipped to the grey scale)."""
    with torch.no_grad():
        means = model.likelihood.mean(torch.tensor(h, dtype=torch.float32)).double().numpy()
    return np.clip(means, 0.0, 1.0) * 255


def assert_canvas_is_the_decoder(opened, model, u, v):
    point = opened.page.evaluate(f"window.decodeAt({u}, {v})")
    size = opened.page.evaluate(
        "() => [document.getElementById('decoded').width, document.getElementById('decoded').height]"
    )
    assert size == [28, 28]  # MNIST-size grey, one canvas pixel per image pixel
    levels = opened.pixels()
    expected = expected_levels(model, point["h"])
    assert levels.shape == expected.shape
    assert np.abs(levels - expected).max() <= 1.0  # one grey level: the page rounds 255 E[x|h] to a byte
    return point


def test_page_loads_offline_and_holds_the_tables_and_figures(browser, tiny_idx_dir, tmp_path, capsys):
    run_dir = make_run(tiny_idx_dir, tmp_path, capsys)
    opened = OpenedPage(browser, run_dir / "report.html")
    assert opened.errors == []
    assert opened.requests == [opened.url]  # nothing but the page itself: no fonts, scripts or styles fetched
    page = opened.page
    assert page.locator("#metrics tbody tr").count() == 1  # one epoch
    headers = page.locator("#metrics thead th").all_inner_texts()
    assert {"epoch", "train_loss", "test_loss"} <= set(headers)
    config_text = page.locator("#config").inner_text()
    for field in ("dataset", "idx", "latent_dims", "activation", "objective", "elbo"):
        assert field in config_text
    groups = page.locator("#config th.group").all_inner_texts()
    assert {"run", "model", "objective"} <= set(groups)
    captions = " ".join(page.locator("#figures figcaption").all_inner_texts())
    assert "samples.png" in captions and "reconstructions.png" in captions
    sources = page.locator("img").evaluate_all("images => images.map(image => image.src)")
    assert len(sources) == len(list(run_dir.glob("*.png")))  # every picture vaelab train wrote
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert page.evaluate("[...document.images].every(image => image.complete && image.naturalWidth > 0)")
    assert page.locator("#sliders input").count() == 0  # a 2-D latent is the plane itself
    page.close()


def test_the_pointer_decodes_the_point_under_it(browser, tiny_idx_dir, tmp_path, capsys):
    run_dir = make_run(tiny_idx_dir, tmp_path, capsys)
    opened = OpenedPage(browser, run_dir / "report.html")
    page = opened.page
    extent = opened.explorer_data()["plane"]["view_extent"]
    before = opened.pixels()
    box = page.locator("#plane").bounding_box()
    page.mouse.move(box["x"] + 0.9 * box["width"], box["y"] + 0.1 * box["height"])
    after = opened.pixels()
    assert np.abs(after - before).max() > 0
    u, v = page.evaluate("window.latentPoint.coordinates")
    pixel = 2 * extent / box["width"]
    assert u == pytest.approx(0.8 * extent, abs=pixel) and v == pytest.approx(0.8 * extent, abs=pixel)
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.7 * box["height"])
    assert np.abs(opened.pixels() - after).max() > 0
    assert opened.errors == []
    page.close()


@pytest.mark.parametrize(
    "options",
    [
        ("--latent-dim", "2"),
        ("--latent-dim", "5", "--depth", "2", "--activation", "tanh"),
        ("--latent-dim", "3", "--activation", "gelu"),
        ("--latent-dim", "3", "--activation", "elu"),
        ("--latent-dim", "3", "--depth", "2", "--activation", "softplus"),
        ("--layers", "2", "--latent-dim", "3", "2", "--hidden", "16", "8"),
        ("--latent-dim", "2", "--prior", "vamp", "--pseudo-inputs", "4"),
        ("--latent-dim", "1"),
        ("--latent-dim", "2", "--likelihood", "gaussian", "--depth", "0"),
    ],
    ids=[
        "2d-relu",
        "5d-tanh-depth2",
        "gelu",
        "elu",
        "softplus-depth2",
        "two-layers",
        "vamp-2d",
        "1d",
        "gaussian-linear",
    ],
)
def test_the_canvas_shows_the_models_own_decoder_means(browser, tiny_idx_dir, tmp_path, capsys, options):
    run_dir = make_run(tiny_idx_dir, tmp_path, capsys, options=options)
    model, _ = load_model(run_dir)
    opened = OpenedPage(browser, run_dir / "report.html")
    explorer = opened.explorer_data()
    plane, dim = explorer["plane"], explorer["plane"]["dim"]
    assert float32s(explorer["points"]["coordinates"]).shape == (2 * explorer["points"]["count"],)  # (N, 2)
    center, directions = float32s(plane["center"]), float32s(plane["directions"]).reshape(dim, dim)
    for u, v in [(0.0, 0.0), (1.3, -0.7), (-2.5, 2.9), (40.0, -40.0)]:  # the last saturates sigmoid and tanh
        point = assert_canvas_is_the_decoder(opened, model, u, v)
        if plane["kind"] == "latent":
            assert point["h"] == [u, v]  # the identity plane: h is the point itself
        else:
            along_v = v * directions[1] if dim > 1 else 0.0  # a 1-D latent is a line: v moves nothing
            np.testing.assert_allclose(point["h"], center + u * directions[0] + along_v, rtol=0, atol=1e-12)
    assert opened.errors == []
    opened.page.close()


def test_a_larger_latent_is_explored_on_its_principal_plane_with_sliders(browser, tiny_idx_dir, tmp_path, capsys):
    options = ("--latent-dim", "5", "--depth", "2", "--activation", "tanh")
    run_dir = make_run(tiny_idx_dir, tmp_path, capsys, options=options)
    model, config = load_model(run_dir)
    opened = OpenedPage(browser, run_dir / "report.html")
    page = opened.page
    plane = opened.explorer_data()["plane"]
    assert plane["kind"] == "principal" and plane["dim"] == 5
    # the plane is the test codes' principal frame, as vaelab.visualize computes it
    x = data.pixels(data.load_dataset(config.dataset, config.data_dir).test.images)
    reference = principal_plane(decoder_codes(model, x))
    center, directions = float32s(plane["center"]), float32s(plane["directions"]).reshape(5, 5)
    np.testing.assert_allclose(center, reference.center.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.abs(directions @ reference.directions.numpy().T), np.eye(5), atol=1e-4)
    np.testing.assert_allclose(plane["sigmas"], reference.variances.sqrt().numpy(), rtol=1e-4, atol=1e-6)

    sliders = page.locator("#sliders input[type=range]")
    assert sliders.count() == 3  # PC 3, 4, 5
    value = 0.5 * plane["ranges"][3]
    before = opened.pixels()
    sliders.nth(1).evaluate(f"input => {{ input.value = {value}; input.dispatchEvent(new Event('input')); }}")
    point = page.evaluate("window.latentPoint")
    assert point["coordinates"] == pytest.approx([0, 0, 0, value, 0])
    np.testing.assert_allclose(point["h"], center + value * directions[3], atol=1e-12)
    after = opened.pixels()
    np.testing.assert_array_less(np.abs(after - expected_levels(model, point["h"])), 1.0 + 1e-9)
    assert np.abs(after - before).max() > 0
    page.locator("#reset").click()
    assert page.evaluate("window.latentPoint.coordinates") == [0, 0, 0, 0, 0]
    assert opened.errors == [] and opened.requests == [opened.url]
    page.close()


def test_every_picture_and_the_evaluation_are_in_the_page(tiny_idx_dir, tmp_path, capsys):
    run_dir = make_run(tiny_idx_dir, tmp_path, capsys)
    assert main(["evaluate", "--checkpoint", str(run_dir), "--k", "1", "2", "--no-laplace"]) == 0
    extra = {name: (run_dir / "samples.png").read_bytes() for name in ("manifold.png", "zebra.png")}
    for name, png in extra.items():
        (run_dir / name).write_bytes(png)
    (run_dir / "loss.png").unlink()  # then the curves are drawn from metrics.csv
    page = build_report(run_dir)
    names = re.findall(r'<span class="mono">([\w.]+\.png)</span>', page)
    on_disk = {path.name for path in run_dir.glob("*.png")}
    assert set(names) == on_disk and len(names) == len(on_disk)
    assert names[:2] == ["samples.png", "reconstructions.png"] and names[-1] == "zebra.png"  # vaelab's own first
    assert page.count("data:image/png;base64,") == len(on_disk) + 1  # and the loss curves, drawn
    assert 'id="eval"' in page and "iwae (k = 2)" in html.unescape(page)
    assert "http://" not in page and "https://" not in page


def test_report_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no run directory" in error and "vaelab train --out" in error

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    assert main(["report", str(foreign)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is not a vaelab run (no checkpoint.pt)" in error

    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    assert main(["report", str(a_file)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_report_out_must_be_html_in_an_existing_directory(tiny_idx_dir, tmp_path, capsys):
    data_dir = tiny_idx_dir()
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--latent-dim", "2", "--data-dir", str(data_dir), "--out", str(run_dir)]) == 0
    capsys.readouterr()
    assert main(["report", str(run_dir), "--out", str(tmp_path / "report.txt")]) == 2
    assert "--out must name an .html file" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--out", str(tmp_path / "nowhere" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--out", str(tmp_path / "elsewhere.html")]) == 0
    assert (tmp_path / "elsewhere.html").read_text().startswith("<!doctype html>")


def _scored_and_detected(run_dir, data_dir, tmp_path, capsys):
    """score and detect-score directories of the run's test images (labels 0-4 count as outliers)."""
    base = ["--checkpoint", str(run_dir), "--no-progress"]
    assert main(["score", *base, "--k", "1", "4", "--out", str(tmp_path / "scored")]) == 0
    assert main(["detect", "fit", *base, "--k", "2", "--out", str(tmp_path / "det")]) == 0
    detector = str(tmp_path / "det" / "detector.json")
    args = ["detect", "score", *base, "--detector", detector, "--outlier-labels", "0", "1", "2", "3", "4"]
    assert main([*args, "--out", str(tmp_path / "detected")]) == 0
    capsys.readouterr()
    return tmp_path / "scored", tmp_path / "detected"


def test_scored_and_detected_sets_get_their_own_sections(browser, tiny_idx_dir, tmp_path, capsys):
    run_dir = make_run(tiny_idx_dir, tmp_path, capsys)
    scored, detected = _scored_and_detected(run_dir, tmp_path / "idx0", tmp_path, capsys)
    assert main(["report", str(run_dir), "--use", str(scored), str(detected)]) == 0
    opened = OpenedPage(browser, run_dir / "report.html")
    assert opened.errors == [] and opened.requests == [opened.url]
    page = opened.page
    assert page.locator("nav a").all_inner_texts()[2:4] == [
        "Scored: idx test (40 images)",
        "Detected: idx test (40 images)",
    ]
    scored_rows = page.locator("#use-1-values tbody th").all_inner_texts()
    assert {"L_1", "L_4", "elbo", "reconstruction", "kl"} <= set(scored_rows)
    assert {"score", "p_value", "flagged"} <= set(page.locator("#use-2-values tbody th").all_inner_texts())
    captions = page.locator("#use-1 figcaption, #use-2 figcaption").all_inner_texts()
    assert captions == ["scores.png", "detect.png"]
    assert page.evaluate("[...document.images].every(image => image.complete && image.naturalWidth > 0)")
    page.close()


def test_a_set_scored_with_another_model_is_refused(tiny_idx_dir, tmp_path, capsys):
    run_dir = make_run(tiny_idx_dir, tmp_path, capsys)
    other = make_run(tiny_idx_dir, tmp_path, capsys, name="other", options=("--latent-dim", "3"))
    scored, _ = _scored_and_detected(other, None, tmp_path, capsys)
    assert main(["report", str(run_dir), "--use", str(scored)]) == 2
    assert "was written with another checkpoint" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--use", str(tmp_path)]) == 2
    assert "holds no scores.npz or detect.npz" in capsys.readouterr().err
