"""`torchrun --nproc_per_node=2 -m vaelab train` on the CPU (gloo) against one process.

Every rank draws the same global batch and noise and takes a contiguous share of it; the loss
(a sum over images) is scaled by the world size because DistributedDataParallel averages the
gradients. So two processes must follow one process's trajectory up to float rounding.
"""

import os
import signal
import subprocess
import sys

import pytest
import torch

from vaelab import checkpoint
from vaelab.cli import main
from vaelab.training import read_metrics

from conftest import wait_for

pytestmark = pytest.mark.usefixtures("plain_torch")

TINY = ["--dataset", "idx", "--batch-size", "8", "--hidden", "16", "--latent-dim", "2"]
TORCHRUN_TIMEOUT_S = 180  # a hang (ranks waiting on each other) fails the test instead of the suite


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun_command(args, log_dir):
    """`vaelab ARGS` under torchrun with 2 CPU processes; each rank's output goes to log_dir."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--redirects",
        "3",
        "--log-dir",
        str(log_dir),
        "-m",
        "vaelab",
        *args,
    ]


def torchrun(args, log_dir):
    return subprocess.run(
        torchrun_command(args, log_dir), capture_output=True, text=True, env=ONE_THREAD, timeout=TORCHRUN_TIMEOUT_S
    )


def rank_log(log_dir, rank, stream):
    (path,) = log_dir.glob(f"*/attempt_0/{rank}/{stream}.log")
    return path.read_text()


def test_two_processes_follow_one_and_only_rank_0_writes(tiny_idx_dir, tmp_path, capsys):
    data_dir = tiny_idx_dir(n_train=40, n_test=8)  # 5 global batches of 8, 4 images per rank
    args = [
        "train",
        *TINY,
        "--data-dir",
        str(data_dir),
        "--epochs",
        "1",
        "--checkpoint-every",
        "2",
        "--binarize",
        "dynamic",
    ]
    launched = torchrun([*args, "--out", str(tmp_path / "ddp")], tmp_path / "logs")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "single"), "--no-progress"]) == 0

    # the all-reduced training loss and the weights are one process's, up to float rounding
    ddp, single = read_metrics(tmp_path / "ddp" / "metrics.csv"), read_metrics(tmp_path / "single" / "metrics.csv")
    for name in ("train_loss", "train_rec", "train_kl", "test_loss"):
        assert ddp[0][name] == pytest.approx(single[0][name], rel=1e-6, abs=1e-5), name
    ddp_state, single_state = checkpoint.load(tmp_path / "ddp"), checkpoint.load(tmp_path / "single")
    for name, value in single_state["model"].items():
        torch.testing.assert_close(ddp_state["model"][name], value, rtol=0, atol=1e-5)
    assert torch.equal(ddp_state["generator"], single_state["generator"])

    # rank 0 alone writes files, prints and shows progress; rank 1 says nothing
    assert sorted(path.name for path in (tmp_path / "ddp").iterdir()) == sorted(
        path.name for path in (tmp_path / "single").iterdir()
    )
    assert "world size: 2" in rank_log(tmp_path / "logs", 0, "stdout")
    assert "epoch 1/1" in rank_log(tmp_path / "logs", 0, "stderr")  # the progress bar
    assert rank_log(tmp_path / "logs", 1, "stdout") == "" and rank_log(tmp_path / "logs", 1, "stderr") == ""

    # a DDP checkpoint is an ordinary one: a single process samples from it and trains it on
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tmp_path / "ddp"), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["train", "--out", str(tmp_path / "ddp"), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert [row["epoch"] for row in read_metrics(tmp_path / "ddp" / "metrics.csv")] == [1, 2]


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--epochs", "0"], "--epochs must be >= 1 (got 0)"),  # found by rank 0, told to rank 1
        (["--batch-size", "41"], "--batch-size 41 exceeds the 40 training images"),  # found by every rank
        (["--lr", "1e3"], "non-finite loss (nan) at epoch 1, step"),  # found in training, agreed by all ranks
    ],
)
def test_a_bad_argument_under_torchrun_fails_cleanly_on_every_rank(tiny_idx_dir, tmp_path, bad, message):
    data_dir, out = tiny_idx_dir(n_train=40, n_test=8), tmp_path / "run"
    launched = torchrun(
        ["train", *TINY, "--data-dir", str(data_dir), "--out", str(out), "--no-progress", *bad], tmp_path / "logs"
    )
    assert launched.returncode != 0
    # Each rank prints the one line and exits 2; torchrun may stop a rank with SIGTERM before it
    # prints, once the other has exited, but never before one of them has said why.
    outputs = [rank_log(tmp_path / "logs", rank, "stderr").strip() for rank in (0, 1)]
    line = next(output for output in outputs if output)
    assert line.startswith(f"vaelab train: error: {message}") and "\n" not in line
    assert all(output in ("", line) for output in outputs), outputs
    assert not (out / "checkpoint.pt").exists()


def test_ctrl_c_under_torchrun_checkpoints_every_rank_and_a_single_process_finishes_the_run(
    tiny_idx_dir, tmp_path, capsys
):
    data_dir, out = tiny_idx_dir(n_train=800, n_test=8), tmp_path / "ddp"  # 100 global batches per epoch
    args = ["train", *TINY, "--data-dir", str(data_dir), "--epochs", "2", "--no-progress"]
    command = torchrun_command([*args, "--checkpoint-every", "10", "--out", str(out)], tmp_path / "logs")
    # A session of its own, so that SIGINT goes to torchrun and its workers as a Ctrl-C would.
    launched = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD, start_new_session=True
    )
    try:
        wait_for(out / "checkpoint.pt", launched, timeout_s=TORCHRUN_TIMEOUT_S)
        os.killpg(launched.pid, signal.SIGINT)
        launched.communicate(timeout=TORCHRUN_TIMEOUT_S)
    finally:
        if launched.poll() is None:
            os.killpg(launched.pid, signal.SIGKILL)
    assert f"continue with: vaelab train --out {out} --resume" in rank_log(tmp_path / "logs", 0, "stdout")
    assert "Traceback" not in rank_log(tmp_path / "logs", 0, "stderr") + rank_log(tmp_path / "logs", 1, "stderr")
    state = checkpoint.load(out)
    assert 0 < state["epoch"] * 100 + state["step"] < 200

    # the saved loss sums are both ranks': finishing in one process gives one process's losses
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    resumed, single = read_metrics(out / "metrics.csv"), read_metrics(tmp_path / "single" / "metrics.csv")
    assert [row["epoch"] for row in resumed] == [1, 2]
    for row, expected in zip(resumed, single):
        assert row["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)


def test_a_device_this_machine_lacks_is_an_error_naming_those_it_has():
    from vaelab.distributed import available_devices, pick_device
    from vaelab.errors import VaelabError

    assert pick_device("cpu") == torch.device("cpu") and available_devices()[0] == "cpu"
    with pytest.raises(VaelabError, match=r"--device cuda:99 is not on this machine \(devices here: cpu"):
        pick_device("cuda:99")
    for name in ("cuda", "mps"):
        if not any(device.startswith(name) for device in available_devices()):
            with pytest.raises(VaelabError, match=f"--device {name} is not on this machine"):
                pick_device(name)


def test_auto_threads_leaves_the_cores_other_processes_keep_busy(monkeypatch):
    import vaelab.distributed as where

    busy = where.busy_cores(0.05)
    assert busy is None or 0 <= busy <= (os.cpu_count() or 1) + 0.01
    monkeypatch.setattr(where.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(where, "busy_cores", lambda: 1.1)  # one neighbour spinning on a core
    assert where.auto_threads(2)[0] == 1 and "about 1.1 cores busy" in where.auto_threads(2)[1]
    monkeypatch.setattr(where, "busy_cores", lambda: 0.2)  # a quiet machine: torch's default, no word
    assert where.auto_threads(2) == (2, "")
    monkeypatch.setattr(where, "busy_cores", lambda: 1.9)  # never fewer than one thread
    assert where.auto_threads(2)[0] == 1
    assert where.auto_threads(1) == (1, "")
