"""bench/throughput.py: its FLOP count, its baseline's faithfulness, and a tiny end-to-end run.

No timing is asserted: the figures depend on the machine and its load.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaelab.config import ModelSpec
from vaelab.data import pixels
from vaelab.kernels.mlp_elbo import batch_negative_elbo

BENCH = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_flops_per_image_counts_forward_and_backward_without_the_pixels_gradient(bench):
    p, h, d = 784, 400, 20
    forward = 2 * (p * h + h * 2 * d + d * h + h * p)
    weight_grads = forward
    input_grads = 2 * (
        h * 2 * d + d * h + h * p
    )  # none for the encoder's first layer (fc1 in vaelab 0.1): the data needs no gradient
    assert bench.train_flops_per_image(ModelSpec()) == forward + weight_grads + input_grads
    assert len(bench.step_gemms(128)) == 11


def test_baseline_dataset_gives_vaelabs_pixels(bench):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = bench.PerSampleImages(images, torch.arange(5))
    batch, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert batch.shape == (5, 1, 28, 28) and batch.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(batch.view(5, -1), pixels(images), rtol=0, atol=0)


def test_baseline_loss_is_vaelabs_negative_elbo(bench):
    """The template's BCE on sigmoid outputs + KLD equals our logits-based -ELBO sum."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 784, generator=generator, dtype=torch.float64)
    x = torch.rand(6, 784, generator=generator, dtype=torch.float64)
    mu, logvar = torch.randn(2, 6, 20, generator=generator, dtype=torch.float64)
    reconstruction, kl = batch_negative_elbo(logits, x, mu, logvar)
    expected = bench.template_loss(torch.sigmoid(logits), x, mu, logvar)
    torch.testing.assert_close(reconstruction + kl, expected, rtol=1e-10, atol=1e-8)


@pytest.mark.slow
def test_quick_run_prints_every_row():
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--steps", "2", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    for row in (
        "torch ",
        "CPU flags:",
        "threads:",
        "matmul roofline fp32",
        "train: vaelab fp32",
        "train: vaelab bf16",
        "train: DataLoader template",
        "eval: -ELBO",
        "eval: IWAE-",
    ):
        assert row in completed.stdout, f"{row!r} missing from:\n{completed.stdout}"


@pytest.mark.slow
def test_the_frontier_writes_its_curve_its_final_estimate_and_its_figure(tmp_path):
    """A tiny frontier run on real MNIST: a curve point, a final -L_k from best.pt, the CSV and the PNG."""
    import csv

    script = Path(__file__).resolve().parents[1] / "bench" / "frontier.py"
    argv = [
        sys.executable,
        str(script),
        "--presets",
        "burda-vae",
        "--budget-minutes",
        "0.001",
        "--epochs",
        "2",
        "--curve-images",
        "50",
        "--final-k",
        "20",
        "--final-images",
        "200",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "frontier.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    kinds = [row["kind"] for row in rows]
    assert kinds == ["curve", "final"]  # the budget is spent in epoch 1: one curve point, then the final estimate
    final = rows[-1]
    assert 50 < float(final["nll"]) < 300 and float(final["stderr"]) > 0 and int(final["parameters"]) == 425_284
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "| burda-vae | 425,284 |" in done.stdout
    # --replot trains nothing and writes the same CSV and table back (the round trip the README's figure takes)
    replot = [sys.executable, str(script), "--replot", str(tmp_path / "frontier.csv"), "--out", str(tmp_path / "re")]
    again = subprocess.run(replot, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "re" / "frontier.csv").read_text() == (tmp_path / "frontier.csv").read_text()
    table = [line for line in done.stdout.splitlines() if line.startswith("| burda-vae")]
    assert table and table == [line for line in again.stdout.splitlines() if line.startswith("| burda-vae")]


def test_the_denormals_benchmark_counts_only_subnormal_float32_entries():
    spec = importlib.util.spec_from_file_location("denormals_bench", BENCH.parent / "denormals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny = torch.finfo(torch.float32).tiny  # the smallest normal float32
    values = torch.tensor([0.0, tiny, tiny / 2, -tiny / 4, 1e-45, 1.0, -3.0])
    assert module.subnormal_count([values]) == (3, 7)  # tiny/2, -tiny/4 and 1e-45 (the smallest subnormal)
    assert module.subnormal_count([values.double() / 1e10]) == (0, 0)  # only float32 tensors are counted


def _load_bench(name):
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_frontier_s_paper_labels_do_not_overlap_and_sit_above_their_lines():
    from matplotlib.figure import Figure

    frontier = _load_bench("frontier")
    axes = Figure().add_subplot()
    axes.plot([1, 2], [80.0, 95.0])
    papers = [(86.76, "a", "C0"), (86.70, "b", "C1"), (84.78, "c", "C2"), (84.80, "d", "C3"), (92.0, "e", "C4")]
    heights = frontier.place_paper_labels(axes, papers)
    low, high = axes.get_ylim()
    lines = [(value - low) / (high - low) for value, _, _ in sorted(papers)]
    assert all(b - a >= frontier.LABEL_GAP - 1e-12 for a, b in zip(heights, heights[1:]))
    assert all(height >= line - 1e-12 for height, line in zip(heights, lines))
    assert [text.get_text() for text in axes.texts] == ["c", "d", "b", "a", "e"]


def test_the_conv_benchmark_counts_each_layer_s_flops_by_the_convolution_arithmetic(bench):
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(8 * 5 * 4, 6))
    x = torch.randn(2, 3, 10, 8)
    calls = bench.forward_layer_calls(model, lambda: model(x))
    # conv: 2 images x 8 channels x 5 x 4 outputs, each 3 x 3 x 3 multiply-adds; linear: 2 x 6 outputs of 160
    assert [call.flops for call in calls] == [2.0 * 2 * 8 * 5 * 4 * 27, 2.0 * 2 * 6 * 160]
    assert [call.input_shape for call in calls] == [(2, 3, 10, 8), (2, 160)]
    roofline = bench.LayerRoofline(calls, seed=0)
    assert roofline.flops == 3 * sum(call.flops for call in calls) and roofline.gflops(1) > 0


def test_the_anytime_table_trains_both_sides_for_each_budget_and_scores_them(tmp_path):
    """bench/anytime.py --quick on real MNIST: vaelab's budget runs and the plain baseline, each budget kept,
    each model scored by `vaelab evaluate`, and --table prints the same table from its anytime.csv."""
    import csv

    script = Path(__file__).resolve().parents[1] / "bench" / "anytime.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    with open(tmp_path / "anytime.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["model"], float(row["budget_s"])) for row in rows] == [
        ("anytime-two-layer", 1.0),
        ("anytime-two-layer", 2.0),
        ("plain PyTorch (Burda VAE)", 1.0),
        ("plain PyTorch (Burda VAE)", 2.0),
    ]
    for row in rows:
        assert float(row["seconds"]) >= 0.5 * float(row["budget_s"])  # trained about as long as its budget
        assert 50 < float(row["nll"]) < 800 and float(row["stderr"]) > 0 and int(row["images"]) == 50
    vaelab_rows = [row for row in rows if row["model"] == "anytime-two-layer"]
    assert int(vaelab_rows[1]["steps"]) > int(vaelab_rows[0]["steps"])  # twice the budget, more steps
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    again = subprocess.run(
        [sys.executable, str(script), "--table", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(table) == 3 and table == [line for line in again.stdout.splitlines() if line.startswith("| ")]
    # the same OUT again: refused without --resume; with it, finished jobs are skipped and an unfinished
    # one (here the 2 s training, marked undone, and its evaluation, removed) continues to the same table
    command = [sys.executable, str(script), "--quick", "--out", str(tmp_path)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "pass --resume to continue it" in refused.stderr
    (tmp_path / "anytime-two-layer-2s.log.done").unlink()
    (tmp_path / "anytime-two-layer-2s" / "eval-k10" / "eval.json").unlink()
    (tmp_path / "anytime-two-layer-2s.eval.log.done").unlink()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:] + resumed.stdout[-2000:]
    assert "done already: baseline.log" in resumed.stdout and "done already: anytime-two-layer-1s.log" in resumed.stdout
    log = (tmp_path / "anytime-two-layer-2s.log").read_text()  # both invocations: the run, then its --resume
    assert log.count("\nrun: ") == 2 and "\nepoch " not in log.split("\nrun: ")[-1]  # its budget was spent
    assert table == [line for line in resumed.stdout.splitlines() if line.startswith("| ")]


def test_the_speedrun_trains_certifies_and_trains_the_baseline_for_the_same_budget(tmp_path):
    """bench/speedrun.py --quick on real MNIST: the attempt and the plain baseline, each scored by -L_100."""
    import json

    script = Path(__file__).resolve().parents[1] / "bench" / "speedrun.py"
    command = [sys.executable, str(script), "--quick", "--preset", "anytime-burda", "--budget", "2", "--threads", "1"]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    rows = json.loads((tmp_path / "speedrun.json").read_text())["rows"]
    assert [row["model"] for row in rows] == ["anytime-burda", "plain PyTorch (Burda VAE)"]
    for row in rows:
        assert row["seconds"] >= 1.0 and row["images"] == 100
        assert 50 < row["nll_100"] <= row["nll_1"] + 1.0  # L_100 is the tighter bound, up to noise
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and table[1].startswith("| anytime-burda |")  # the header, then one row per model
