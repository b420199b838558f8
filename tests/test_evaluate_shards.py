"""`vaelab evaluate` in shards: a killed evaluation resumes from the shards done and gives the same eval.json,
torchrun's ranks share the shards with one process's result, and the shard maths merge exactly."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from vaelab.cli import main
from vaelab.cli.evaluate import PARTIAL_PREFIX
from vaelab.config import ModelSpec
from vaelab.evaluation import importance_weighted_evaluation
from vaelab.errors import VaelabError
from vaelab.evaluation.runner import ShardStore, merge_shards, run_per_image, shard_ranges
from vaelab.evaluation.shards import ShardPlan, estimates, evaluate_shard
from vaelab.models import build_model
from vaelab.training.metrics import read_metrics

from conftest import interrupted, run_ok
from test_distributed import ONE_THREAD, TINY, torchrun

pytestmark = pytest.mark.usefixtures("plain_torch")

EVAL = ["--k", "1", "10", "--shard-images", "4", "--no-progress", "--laplace-k", "5"]


def test_shards_merge_into_the_single_pass_result():
    torch.manual_seed(0)
    # float64: shard boundaries move batch boundaries, whose float32 rounding (~1e-7 relative) would blur the check
    model = build_model(ModelSpec(input_dim=12, hidden=6, latent_dims=3)).double()
    x = torch.rand(11, 12, dtype=torch.float64).bernoulli()
    plan = ShardPlan(ks=(1, 7), seed=3, laplace=True, laplace_k=4)
    whole = evaluate_shard(model, x, 0, plan, torch.device("cpu"))
    parts = [
        evaluate_shard(model, x[r.start : r.stop], r.start, plan, torch.device("cpu")) for r in shard_ranges(11, 4)
    ]
    merged = merge_shards(parts)
    for name in ("L_1", "L_7", "log_likelihood", "kl", "laplace", "laplace_is"):
        torch.testing.assert_close(merged[name], whole[name], rtol=1e-12, atol=1e-12)
    found = estimates(merged, (1, 7))
    reference = importance_weighted_evaluation(model, x, [1, 7], seed=3)
    assert found["L_7"].mean == pytest.approx(reference.bounds[7].mean, abs=1e-9)
    assert found["elbo"].mean == pytest.approx(reference.elbo.mean, abs=1e-9)
    assert [len(r) for r in shard_ranges(11, 4)] == [4, 4, 3]


def _trained_run(tiny_idx_dir, tmp_path, capsys):
    data_dir = tiny_idx_dir(n_train=24, n_test=14)
    run = tmp_path / "run"
    run_ok(["train", *TINY, "--data-dir", str(data_dir), "--epochs", "1", "--out", str(run), "--no-progress"], capsys)
    return run


def _numbers(path):
    """eval.json's estimates without their wall times."""

    def timeless(value):
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items() if k != "seconds"}
        if isinstance(value, list):
            return [timeless(v) for v in value]
        return value

    result = json.loads(path.read_text())
    keys = ("iwae", "elbo", "reconstruction", "kl", "laplace", "laplace_is", "active_units", "bits_per_dim")
    return timeless({key: result[key] for key in keys})


def test_an_interrupted_evaluation_resumes_from_its_shards_with_the_same_result(
    tiny_idx_dir, tmp_path, capsys, monkeypatch
):
    run = _trained_run(tiny_idx_dir, tmp_path, capsys)
    run_ok(["evaluate", "--checkpoint", str(run), *EVAL, "--out", str(tmp_path / "straight")], capsys)
    assert not list((tmp_path / "straight").glob(f"{PARTIAL_PREFIX}*"))  # removed once eval.json is written

    # the process dies after two of its four shards
    interrupted(monkeypatch, ["evaluate", "--checkpoint", str(run), *EVAL, "--out", str(tmp_path / "cut")])
    (partial,) = (tmp_path / "cut").glob(f"{PARTIAL_PREFIX}*")
    assert len(list(partial.iterdir())) == 2 and not (tmp_path / "cut" / "eval.json").exists()

    out = run_ok(["evaluate", "--checkpoint", str(run), *EVAL, "--out", str(tmp_path / "cut")], capsys)
    assert "resumed: 8 images already done" in out
    assert _numbers(tmp_path / "cut" / "eval.json") == _numbers(tmp_path / "straight" / "eval.json")

    # other settings never read those shards: a different seed computes afresh
    main(["evaluate", "--checkpoint", str(run), *EVAL, "--seed", "5", "--out", str(tmp_path / "cut")])
    assert "resumed" not in capsys.readouterr().out


def _cut_after_two_shards(monkeypatch, run, out):
    """Run the evaluation into `out` until two of its four shards are on disk, then stop it as a kill would."""
    interrupted(monkeypatch, ["evaluate", "--checkpoint", str(run), *EVAL, "--out", str(out)])
    (partial,) = out.glob(f"{PARTIAL_PREFIX}*")
    return sorted(partial.iterdir())


def test_a_shard_changed_on_disk_is_computed_again_not_merged(tiny_idx_dir, tmp_path, capsys, monkeypatch):
    run = _trained_run(tiny_idx_dir, tmp_path, capsys)
    run_ok(["evaluate", "--checkpoint", str(run), *EVAL, "--out", str(tmp_path / "straight")], capsys)
    first, _ = _cut_after_two_shards(monkeypatch, run, tmp_path / "cut")
    record = torch.load(first, weights_only=True)
    record["values"]["L_10"][0] += 0.6  # one value moved, the file otherwise intact (its digest kept)
    torch.save(record, first)
    assert main(["evaluate", "--checkpoint", str(run), *EVAL, "--out", str(tmp_path / "cut")]) == 0
    captured = capsys.readouterr()
    assert "resumed: 4 images" in captured.out  # the sound shard only
    assert f"{first.name} no longer matches its digest" in captured.err
    assert _numbers(tmp_path / "cut" / "eval.json") == _numbers(tmp_path / "straight" / "eval.json")


def test_a_shard_that_changes_before_the_merge_is_refused(tmp_path):
    model = build_model(ModelSpec(input_dim=12, hidden=6, latent_dims=3))
    x = torch.rand(6, 12).bernoulli()
    store = ShardStore(tmp_path / "partial", "f" * 64)
    plan = ShardPlan(ks=(1, 3), seed=0, laplace=False, laplace_k=0)

    def compute(model, part, first):
        values = evaluate_shard(model, part, first, plan, torch.device("cpu"))
        if first == 3:  # the first shard is tampered with while the second is computed
            record = torch.load(store.path(range(0, 3)), weights_only=True)
            record["values"]["L_3"][1] = 0.0
            torch.save(record, store.path(range(0, 3)))
        return values

    with pytest.raises(VaelabError, match="do not match their digest.*rerun the same command"):
        run_per_image(model, x, compute, store, 3)


def test_shards_of_other_images_are_never_resumed(tiny_idx_dir, tmp_path, capsys, monkeypatch):
    """Same run, same options, but the data directory now holds other images: the old shards are not read."""
    data_dir = tiny_idx_dir(n_train=24, n_test=14)
    run = tmp_path / "run"
    run_ok(["train", *TINY, "--data-dir", str(data_dir), "--epochs", "1", "--out", str(run), "--no-progress"], capsys)
    _cut_after_two_shards(monkeypatch, run, tmp_path / "cut")
    other = tiny_idx_dir(n_train=24, n_test=14, seed=99)
    args = ["evaluate", "--checkpoint", str(run), *EVAL, "--data-dir", str(other), "--out", str(tmp_path / "cut")]
    out = run_ok(args, capsys)
    assert "resumed" not in out
    fresh = run_ok([*args[:-1], str(tmp_path / "fresh")], capsys)
    assert "resumed" not in fresh
    assert _numbers(tmp_path / "cut" / "eval.json") == _numbers(tmp_path / "fresh" / "eval.json")
    assert json.loads((tmp_path / "cut" / "eval.json").read_text())["images_sha256"]


@pytest.mark.slow
def test_kill_9_mid_evaluation_then_resume_gives_the_same_eval_json(tiny_idx_dir, tmp_path, capsys):
    run = _trained_run(tiny_idx_dir, tmp_path, capsys)
    args = ["evaluate", "--checkpoint", str(run), "--k", "1", "3000", "--shard-images", "2", "--no-laplace"]
    run_ok([*args, "--out", str(tmp_path / "straight"), "--no-progress"], capsys)
    log = tmp_path / "killed.log"
    with (
        open(log, "wb") as errors,
        subprocess.Popen(
            [sys.executable, "-m", "vaelab", *args, "--out", str(tmp_path / "killed")],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env=ONE_THREAD,
        ) as process,
    ):  # the context closes every pipe and file, also when an assertion fails
        try:
            while not list((tmp_path / "killed").glob(f"{PARTIAL_PREFIX}*/shard-*")):
                assert process.poll() is None, log.read_text()
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert not (tmp_path / "killed" / "eval.json").exists()
    out = run_ok([*args, "--out", str(tmp_path / "killed"), "--no-progress"], capsys)
    assert "resumed:" in out
    assert _numbers(tmp_path / "killed" / "eval.json") == _numbers(tmp_path / "straight" / "eval.json")


@pytest.mark.slow
def test_torchrun_splits_the_shards_and_gives_one_process_s_result(tiny_idx_dir, tmp_path, capsys):
    run = _trained_run(tiny_idx_dir, tmp_path, capsys)
    run_ok(["evaluate", "--checkpoint", str(run), *EVAL, "--out", str(tmp_path / "one")], capsys)
    launched = torchrun(["evaluate", "--checkpoint", str(run), *EVAL, "--out", str(tmp_path / "two")], tmp_path / "l")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert _numbers(tmp_path / "two" / "eval.json") == _numbers(tmp_path / "one" / "eval.json")


def test_an_8_bit_run_reports_bits_per_dimension_beside_nats(tmp_path, capsys):
    import math

    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (30, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", train=images[:24], test=images[24:])
    os.environ["VAELAB_DATA"] = str(tmp_path / "cache")
    try:
        run = tmp_path / "run"
        args = ["--dataset", "array", "--data-dir", str(tmp_path / "set.npz"), "--network", "conv", "--channels", "2"]
        run_ok(
            [
                "train",
                *args,
                "--likelihood",
                "logistic",
                "--latent-dim",
                "2",
                "--batch-size",
                "8",
                "--epochs",
                "1",
                "--out",
                str(run),
                "--no-progress",
            ],
            capsys,
        )
        out = run_ok(["evaluate", "--checkpoint", str(run), "--k", "1", "5", "--no-progress"], capsys)
    finally:
        del os.environ["VAELAB_DATA"]
    assert "bits/dim" in out and "grey-level targets" not in out
    result = json.loads((run / "eval.json").read_text())
    # a conv decoder's Laplace search is far slower than its bounds: off by default, and said so
    assert "Laplace estimates skipped" in out and result["laplace"] is None
    assert result["dims"] == 90
    for estimate in result["iwae"]:
        expected = -estimate["mean"] / (90 * math.log(2))
        assert result["bits_per_dim"][f"L_{estimate['k']}"] == pytest.approx(expected, rel=1e-12)
        assert 0 < expected < 12  # a code length per 8-bit subpixel, near 8 for an untrained model of noise
    rows = read_metrics(run / "metrics.csv")
    assert rows
    for row in rows:  # the epoch's test -ELBO in bits per 8-bit subpixel
        nats = row["test_rec"] + row["test_kl"]
        assert row["test_bpd"] == pytest.approx(nats / (90 * math.log(2)), rel=1e-5)
