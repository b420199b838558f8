"""The `vaelab` command end to end: outputs, refusals in one line, earlier runs left intact."""

import csv
import subprocess
import sys

import pytest
import torch


from conftest import run_ok, run_refused
from vaelab.config import ModelSpec, TrainConfig, load_json
from vaelab.evaluation import negative_elbo
from vaelab.models import VAE

TINY = [
    "--dataset",
    "idx",
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--hidden",
    "16",
    "--latent-dim",
    "2",
    "--no-progress",
]


def test_train_writes_every_output_and_sample_reads_the_run(tiny_idx_dir, tmp_path, capsys):
    data_dir, out = tiny_idx_dir(n_train=32, n_test=8), tmp_path / "run"
    out_text = run_ok(["train", *TINY, "--data-dir", str(data_dir), "--out", str(out)], capsys)
    assert "test -ELBO" in out_text
    for name in (
        "config.json",
        "command.txt",
        "metrics.csv",
        "checkpoint.pt",
        "samples.png",
        "reconstructions.png",
        "loss.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for target in (out, out / "checkpoint.pt"):
        picture = tmp_path / f"new-{target.name}.png"
        run_ok(["sample", "--checkpoint", str(target), "--n", "9", "--out", str(picture)], capsys)
        assert picture.read_bytes()[:4] == b"\x89PNG"


def test_an_existing_run_is_refused_and_left_intact(tiny_idx_dir, tmp_path, capsys):
    data_dir, out = tiny_idx_dir(n_train=16, n_test=8), tmp_path / "run"
    run_ok(["train", *TINY, "--data-dir", str(data_dir), "--out", str(out)], capsys)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    run_refused(["train", *TINY, "--data-dir", str(data_dir), "--out", str(out)], capsys, "already holds a run")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    run_ok(["train", *TINY, "--data-dir", str(data_dir), "--out", str(out), "--overwrite"], capsys)


def test_resume_trains_on_to_the_new_total(tiny_idx_dir, tmp_path, capsys):
    data_dir, out = tiny_idx_dir(n_train=16, n_test=8), tmp_path / "run"
    run_ok(["train", *TINY, "--data-dir", str(data_dir), "--out", str(out)], capsys)
    run_refused(["train", "--out", str(out), "--resume"], capsys, "already finished 1 epochs")
    run_refused(["train", "--out", str(out), "--resume", "--epochs", "2", "--lr", "0.5"], capsys, "--lr")
    run_ok(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"], capsys)
    with open(out / "metrics.csv") as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["1", "2"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--epochs", "0"], "--epochs must be >= 1"),
        (["train", "--latent-dim", "0"], "--latent-dim must be >= 1"),
        (["train", "--dataset", "idx"], "--data-dir"),
        (["train", "--resume"], "--resume needs --out"),
        (["sample", "--checkpoint", "/nonexistent", "--out", "x.png"], "no checkpoint at /nonexistent"),
    ],
)
def test_bad_arguments_give_one_clear_line(argv, match, capsys):
    run_refused(argv, capsys, match)


def test_batch_larger_than_the_data_is_refused(tiny_idx_dir, tmp_path, capsys):
    data_dir = tiny_idx_dir(n_train=16, n_test=8)
    argv = ["train", *TINY, "--data-dir", str(data_dir), "--out", str(tmp_path / "r"), "--batch-size", "64"]
    run_refused(argv, capsys, "--batch-size 64 exceeds the 16 training images")


def test_unwritable_output_directory_is_refused(tiny_idx_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    data_dir = tiny_idx_dir(n_train=16, n_test=8)
    run_refused(["train", *TINY, "--data-dir", str(data_dir), "--out", str(blocker / "run")], capsys, "cannot write to")


def test_help_names_every_default():
    result = subprocess.run(
        [sys.executable, "-m", "vaelab", "train", "--help"], capture_output=True, text=True, check=True
    )
    text = " ".join(result.stdout.split())
    for default in (
        "(default: 10)",
        "(default: 128)",
        "(default: 0.001)",
        "(default: 20)",
        "(default: 400)",
        "(default: 1)",
        "(default: mnist)",
    ):
        assert default in text


@pytest.mark.slow
def test_short_real_mnist_training_through_the_cli(tmp_path, capsys):
    """A few hundred real MNIST images: the outputs exist and the test loss falls below the untrained model's."""
    out = tmp_path / "run"
    run_ok(
        ["train", "--train-size", "512", "--test-size", "256", "--epochs", "2", "--out", str(out), "--no-progress"],
        capsys,
    )
    with open(out / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    from vaelab.data import load_dataset, pixels

    test_x = pixels(load_dataset("mnist").test.images[:256])
    torch.manual_seed(1)
    untrained = sum(negative_elbo(VAE(ModelSpec()), test_x, seed=1))
    losses = [float(row["test_loss"]) for row in rows]
    assert losses[1] < losses[0] < untrained
    assert all((out / name).is_file() for name in ("samples.png", "reconstructions.png", "loss.png", "checkpoint.pt"))


def test_data_info_shows_the_cache_and_fetch_refuses_without_a_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    out = run_ok(["data", "info"], capsys)
    assert str(tmp_path / "cache") in out and "mnist" in out and "fashion-mnist" in out


def test_model_and_objective_options_build_the_run_and_config_replays_it(tiny_idx_dir, tmp_path, capsys):
    """--layers/--prior/--objective reach config.json; `--config RUN/config.json` trains the same run again."""
    import json

    from vaelab.config import TrainConfig, load_json

    data_dir, first, again = tiny_idx_dir(n_train=32, n_test=8), tmp_path / "first", tmp_path / "again"
    options = [
        "--layers",
        "2",
        "--latent-dim",
        "3",
        "2",
        "--hidden",
        "12",
        "--depth",
        "2",
        "--activation",
        "tanh",
        "--prior",
        "vamp",
        "--pseudo-inputs",
        "4",
        "--objective",
        "dreg",
        "--k",
        "3",
        "--binarize",
        "dynamic",
    ]
    out_text = run_ok(["train", *TINY, "--data-dir", str(data_dir), "--out", str(first), *options], capsys)
    assert "gradient: autograd (mlp-elbo-by-hand: 2 stochastic layers" in out_text
    config = load_json(TrainConfig, first / "config.json")
    assert config.model == ModelSpec(
        latent_dims=(3, 2), hidden=(12, 12), depth=2, activation="tanh", prior="vamp", pseudo_inputs=4
    )
    assert (config.objective.name, config.objective.k) == ("dreg", 3)
    run_ok(["train", "--config", str(first / "config.json"), "--out", str(again), "--no-progress"], capsys)
    assert json.loads((again / "config.json").read_text()) == json.loads((first / "config.json").read_text())
    assert (again / "metrics.csv").read_text().split("\n")[1].split(",")[:5] == (
        first / "metrics.csv"
    ).read_text().split("\n")[1].split(",")[:5]
    run_refused(
        [
            "train",
            "--config",
            str(first / "config.json"),
            "--out",
            str(tmp_path / "x"),
            "--k",
            "2",
            "--objective",
            "elbo",
        ],
        capsys,
        "--k 2 applies to --objective iwae or dreg",
    )
    run_refused(
        ["train", "--config", str(first / "config.json"), "--out", str(first), "--resume", "--epochs", "3"],
        capsys,
        "give one of them",
    )


def test_layers_take_one_value_for_all_or_one_each(capsys):
    from vaelab.cli import build_parser
    from vaelab.cli.train import train_config

    parse = lambda *argv: train_config(build_parser().parse_args(["train", *argv]))  # noqa: E731
    assert parse("--layers", "2").model.latent_dims == (20, 20)
    assert parse("--latent-dim", "100", "50", "--hidden", "200", "100").model.hidden == (200, 100)
    with pytest.raises(Exception, match="one value per stochastic layer"):
        parse("--layers", "2", "--latent-dim", "5", "4", "3")


def test_a_preset_starts_the_run_and_options_override_it(tiny_idx_dir, tmp_path, capsys):
    from vaelab.config import TrainConfig, load_json
    from vaelab.presets import PRESETS

    data_dir, out = tiny_idx_dir(n_train=48, n_test=8), tmp_path / "run"
    argv = [
        "train",
        "--preset",
        "burda-vae",
        "--dataset",
        "idx",
        "--data-dir",
        str(data_dir),
        "--epochs",
        "3",
        "--validation-size",
        "16",
        "--patience",
        "1",
        "--lr",
        "1e-30",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--no-progress",
    ]
    text = run_ok(argv, capsys)
    config = load_json(TrainConfig, out / "config.json")
    assert config.preset == "burda-vae" and config.model == PRESETS["burda-vae"].config.model
    assert (config.epochs, config.validation_size, config.binarize) == (3, 16, "dynamic")
    assert "stopped after epoch 2 of 3: no better validation -ELBO for 1 epochs; best.pt holds" in text
    assert (out / "best.pt").is_file()
    run_refused(["train", "--preset", "nope", "--out", str(tmp_path / "x")], capsys, "unknown --preset 'nope'")
    run_refused(["train", "--preset", "burda-vae", "--out", str(out), "--resume"], capsys, "give one of them")
    run_refused(
        ["train", "--out", str(out), "--resume", "--epochs", "5", "--validation-size", "8"],
        capsys,
        "these options differ from it: --validation-size",
    )


def tiny_config_file(path, data_dir, **changes):
    """A saved config (as `vaelab train` writes it) of a tiny idx run, with `changes` written over its JSON."""
    import json

    from vaelab.config import TrainConfig, to_dict

    config = TrainConfig(
        dataset="idx", data_dir=str(data_dir), epochs=1, batch_size=8, model=ModelSpec(hidden=16, latent_dims=2)
    )
    path.write_text(json.dumps({**to_dict(config), **changes}))
    return path


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"device": "cuda:99"}, "--device cuda:99 is not on this machine (devices here: cpu"),
        ({"epochs": True}, "'epochs' is True (bool), expected int"),
        ({"epochs": 2.5}, "'epochs' is 2.5 (float), expected int"),
        ({"budget": 60.0, "budget_plan": [[0.0, 10.0], [3.0, 12.0]]}, "'budget_plan' is [[0.0, 10.0], [3.0, 12.0]]"),
        ({"budget": 60.0, "budget_plan": [["0", "10"]]}, "'budget_plan' is [['0', '10']]"),
    ],
)
def test_a_config_of_wrong_types_or_a_missing_device_is_refused_in_one_line(
    tiny_idx_dir, tmp_path, capsys, changes, match
):
    config = tiny_config_file(tmp_path / "config.json", tiny_idx_dir(n_train=16, n_test=8), **changes)
    out = tmp_path / "run"
    run_refused(["train", "--config", str(config), "--out", str(out), "--no-progress"], capsys, match)
    assert not out.exists()


def test_a_config_trains_on_its_device_and_records_it(tiny_idx_dir, tmp_path, capsys):
    config = tiny_config_file(tmp_path / "config.json", tiny_idx_dir(n_train=16, n_test=8), device="cpu")
    out = tmp_path / "run"
    assert "device: cpu" in run_ok(["train", "--config", str(config), "--out", str(out), "--no-progress"], capsys)
    assert load_json(TrainConfig, out / "config.json").device == "cpu"


def test_epochs_beside_a_budget_are_refused_rather_than_cutting_it_short(tiny_idx_dir, tmp_path, capsys):
    data_dir = tiny_idx_dir(n_train=16, n_test=8)
    argv = ["train", *TINY, "--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "--budget", "30m"]
    run_refused(argv, capsys, "--epochs 1 and --budget both end the run")
    config = tiny_config_file(tmp_path / "config.json", data_dir, budget=1800.0, epochs=1_000_000)
    argv = ["train", "--config", str(config), "--epochs", "2", "--out", str(tmp_path / "run"), "--no-progress"]
    run_refused(argv, capsys, "--epochs 2 and --config's budget of 1800 s both end the run")
    assert not (tmp_path / "run").exists()


def test_a_run_directory_another_process_writes_is_refused(tiny_idx_dir, tmp_path, capsys, lock_holder):
    data_dir, out = tiny_idx_dir(n_train=16, n_test=8), tmp_path / "run"
    run_ok(["train", *TINY, "--data-dir", str(data_dir), "--out", str(out)], capsys)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    holder = lock_holder(out)  # as a second `vaelab train` would while it trains there
    for extra in (["--overwrite"], ["--resume", "--epochs", "2"]):
        argv = ["train", *TINY, "--data-dir", str(data_dir), "--out", str(out), *extra]
        run_refused(argv, capsys, f"{out} is being written by holder (process {holder.pid})")
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.name != ".lock"} == {
        name: content for name, content in before.items() if name != ".lock"
    }
    fresh = tmp_path / "fresh"
    lock_holder(fresh)
    run_refused(["train", *TINY, "--data-dir", str(data_dir), "--out", str(fresh)], capsys, "is being written by")
    assert [path.name for path in fresh.iterdir()] == [".lock"]


def test_a_test_split_of_one_image_trains_and_draws_every_picture(tiny_idx_dir, tmp_path, capsys):
    data_dir, out = tiny_idx_dir(n_train=16, n_test=1), tmp_path / "run"
    argv = ["train", *TINY, "--data-dir", str(data_dir), "--out", str(out), "--latent-dim", "3"]
    assert "test -ELBO" in run_ok(argv, capsys)  # a 3-D latent: the scatter's principal plane of one code
    assert (out / "latent_scatter.png").stat().st_size > 0 and (out / "manifold.png").stat().st_size > 0
