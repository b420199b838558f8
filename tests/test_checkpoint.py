"""Checkpoints: written atomically, read without ever running code, damage reported in one line."""

import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from vaelab import checkpoint
from vaelab.cli import main
from vaelab.config import ModelSpec, TrainConfig, to_dict
from vaelab.errors import VaelabError
from vaelab.models import VAE

SMALL = ModelSpec(input_dim=16, hidden=8, latent_dims=2)


def vaelab_state(model_config=SMALL, weights_config=SMALL):
    """A minimal checkpoint: weights of `weights_config`, config claiming `model_config`."""
    torch.manual_seed(0)
    return {
        "model": VAE(weights_config).state_dict(),
        "config": to_dict(TrainConfig(model=model_config)),
        "epoch": 1,
        "step": 0,
    }


class PlantedCode:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_save_then_load_round_trips_tensors_and_plain_values(tmp_path):
    state = vaelab_state()
    checkpoint.save(state, tmp_path / "checkpoint.pt")
    loaded = checkpoint.load(tmp_path)  # a run directory resolves to its checkpoint.pt
    assert loaded["format_version"] == checkpoint.FORMAT_VERSION
    assert loaded["config"] == state["config"] and loaded["epoch"] == 1
    assert all(torch.equal(value, loaded["model"][name]) for name, value in state["model"].items())
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_a_failed_save_keeps_the_previous_checkpoint_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(vaelab_state(), path)
    before = path.read_bytes()
    with pytest.raises(TypeError):  # torch.save cannot pickle a generator object
        checkpoint.save({**vaelab_state(), "bad": (i for i in range(3))}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_an_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(VaelabError, match="cannot write checkpoint .*writable"):
        checkpoint.save(vaelab_state(), blocker / "checkpoint.pt")


def test_temporaries_of_dead_writers_are_removed_at_the_next_save_and_never_loaded(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = tmp_path / f".checkpoint.pt.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".checkpoint.pt.{os.getppid()}.tmp"  # a live process's file is left alone
    alive.write_bytes(b"being written")
    with pytest.raises(VaelabError, match="no checkpoint at"):
        checkpoint.load(tmp_path)  # a temporary is never taken for the checkpoint
    checkpoint.save(vaelab_state(), tmp_path / "checkpoint.pt")
    assert not stale.exists() and alive.exists()
    assert checkpoint.load(tmp_path)["epoch"] == 1


@pytest.mark.parametrize("how", ["torch.save", "raw pickle", "legacy torch.save"])
def test_loading_never_executes_code(tmp_path, how, capsys):
    marker = tmp_path / "PWNED"
    planted = {"model": PlantedCode(marker), "config": {}}
    path = tmp_path / "checkpoint.pt"
    if how == "torch.save":
        torch.save(planted, path)
    elif how == "raw pickle":
        path.write_bytes(pickle.dumps(planted))
    else:
        torch.save(planted, path, _use_new_zipfile_serialization=False)
    with pytest.raises(VaelabError, match="refused to load .*only load checkpoints written by vaelab"):
        checkpoint.load(path)
    code = main(["sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "refused to load" in err[0], err
    assert not marker.exists()
    assert not (tmp_path / "x.png").exists()


def test_the_planted_pickle_really_runs_code_when_loaded_unsafely(tmp_path):
    """The control for the test above: without weights_only the marker does appear."""
    marker = tmp_path / "PWNED"
    torch.save({"model": PlantedCode(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def flip(data, offset):
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda data: data[: len(data) // 2], "truncated or damaged"),
        (lambda data: data[:10], "truncated or damaged"),
        (lambda data: b"", "the file is empty"),
        (lambda data: flip(data, data.index(b"\x80\x02}") + 20), "damaged"),  # inside the pickle
        (lambda data: bytes(random.Random(0).randrange(256) for _ in range(2000)), "damaged"),
    ],
    ids=["half", "10 bytes", "empty", "flipped byte", "random bytes"],
)
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path, damage, match, capsys):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(vaelab_state(), path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(VaelabError, match=match) as raised:
        checkpoint.load(path)
    assert "\n" not in str(raised.value)
    assert main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.png")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "content", [[1, 2], {"model": torch.zeros(3), "config": {}}, {"model": {}, "config": "x"}, {"weights": {}}]
)
def test_a_file_that_is_not_a_vaelab_checkpoint_is_refused(tmp_path, content):
    torch.save(content, tmp_path / "checkpoint.pt")
    with pytest.raises(VaelabError, match="is not a vaelab checkpoint"):
        checkpoint.load(tmp_path)


def test_sample_refuses_weights_that_do_not_match_their_config(tmp_path, capsys):
    checkpoint.save(
        vaelab_state(model_config=ModelSpec(input_dim=16, hidden=9, latent_dims=2)), tmp_path / "checkpoint.pt"
    )
    assert main(["sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights do not fit the saved architecture" in err[0], err


def test_sample_refuses_a_config_with_unknown_keys(tmp_path, capsys):
    state = vaelab_state()
    state["config"]["learning_rate"] = 0.1
    checkpoint.save(state, tmp_path / "checkpoint.pt")
    assert main(["sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown TrainConfig key(s) learning_rate" in capsys.readouterr().err


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    checkpoint.save({**vaelab_state(), "rng": checkpoint.capture_rng_state()}, tmp_path / "checkpoint.pt")
    expected = (torch.rand(4), random.random(), np.random.rand(), np.random.randn())
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    checkpoint.restore_rng_state(checkpoint.load(tmp_path)["rng"])
    again = (torch.rand(4), random.random(), np.random.rand(), np.random.randn())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


VERSION_1_LAYERS = {
    "encoder.net.trunk.0": "fc1",
    "encoder.net.head": "fc2",
    "likelihood.decoder.trunk.0": "fc3",
    "likelihood.decoder.head": "fc4",
}


def as_version_1(state):
    """A current checkpoint dict written as vaelab 0.1 did: fc1..fc4, ModelConfig, (reconstruction, KL) sums."""
    old = {key: value for key, value in state.items() if key != "format_version"}
    old["model"] = {}
    for key, value in state["model"].items():
        layer, _, parameter = key.rpartition(".")
        old["model"][f"{VERSION_1_LAYERS[layer]}.{parameter}"] = value
    config = {key: value for key, value in state["config"].items() if key != "objective"}  # 0.1 had no objective
    model = config["model"]
    config["model"] = {
        "input_dim": model["input_dim"],
        "hidden": model["hidden"][0],
        "latent_dim": model["latent_dims"][0],
    }
    old["config"] = config
    old["running"] = state["running"][1:].clone()  # (reconstruction, KL)
    old["format_version"] = 1
    return old


def test_a_version_1_checkpoint_is_upgraded_on_load_and_resumes(tiny_idx_dir, tmp_path, capsys):
    data_dir = tiny_idx_dir(n_train=16, n_test=8)
    new, old = tmp_path / "new", tmp_path / "old"
    argv = [
        "train",
        "--dataset",
        "idx",
        "--data-dir",
        str(data_dir),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--hidden",
        "8",
        "--latent-dim",
        "2",
        "--no-progress",
    ]
    assert main([*argv, "--out", str(new)]) == 0
    assert main([*argv, "--out", str(old)]) == 0
    version_1 = as_version_1(checkpoint.load(new))
    assert sorted(version_1["model"]) == [f"fc{i}.{p}" for i in range(1, 5) for p in ("bias", "weight")]
    torch.save(version_1, old / "checkpoint.pt")  # by hand, as 0.1 wrote it: not through checkpoint.save

    loaded = checkpoint.load(old)
    assert loaded["format_version"] == checkpoint.FORMAT_VERSION == 2
    assert loaded["running"].shape == (3,)
    model, config = checkpoint.load_model(old)
    assert config.model == ModelSpec(input_dim=784, hidden=8, latent_dims=2)
    assert torch.equal(model.likelihood.decoder.head.weight, version_1["model"]["fc4.weight"])
    assert torch.equal(model.encoder.net.trunk[0].weight, version_1["model"]["fc1.weight"])

    resume = ["train", "--resume", "--epochs", "2", "--no-progress"]
    assert main([*resume, "--out", str(old)]) == 0
    assert main([*resume, "--out", str(new)]) == 0
    capsys.readouterr()
    continued, reference = checkpoint.load(old), checkpoint.load(new)
    assert continued["epoch"] == 2 and len(continued["history"]) == 2
    for name, value in reference["model"].items():  # the upgraded run goes on exactly as the current one
        assert torch.equal(value, continued["model"][name]), name
