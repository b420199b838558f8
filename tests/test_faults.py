"""Training under faults: exact resumes, Ctrl-C and SIGTERM, kill -9, non-finite losses, bad input.

Each claim is checked the way a user would meet it: through `vaelab train` (in-process `main`
where a process boundary adds nothing, a real subprocess where signals are the point).
"""

import gzip
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from vaelab import checkpoint
from vaelab import objectives as objectives_module
from vaelab.cli import main
from vaelab.config import ModelSpec, TrainConfig
from vaelab.data import IDX_FILES, TRAIN_IMAGES, TRAIN_LABELS, TEST_LABELS
from vaelab.errors import VaelabError
from vaelab.kernels import mlp_elbo as mlp_elbo_module
from vaelab.training import guards as guards_module
from vaelab.training import loop as loop_module
from vaelab.training import read_metrics, train

from conftest import wait_for

TINY = ["--dataset", "idx", "--batch-size", "8", "--hidden", "16", "--latent-dim", "2", "--no-progress"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("plain_torch")


def train_args(data_dir, out, *extra):
    return ["train", *TINY, "--data-dir", str(data_dir), "--out", str(out), *extra]


def run(argv, capsys):
    """main(argv) -> (exit status, stdout, stderr lines)."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def refused(argv, capsys, match):
    code, _, err = run(argv, capsys)
    assert code == 2 and len(err) == 1 and match in err[0], err
    return err[0]


def snapshot(directory):
    return {path.name: path.read_bytes() for path in directory.iterdir()} if directory.exists() else None


def assert_same_training(run_a, run_b):
    """Bit-identical weights, optimizer moments and generator, and the same per-epoch losses."""
    a, b = checkpoint.load(run_a), checkpoint.load(run_b)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for index, moments in a["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert torch.equal(a["generator"], b["generator"])
    assert epoch_losses(run_a) == epoch_losses(run_b)


def epoch_losses(run_dir):
    return [(row["epoch"], row["train_loss"], row["test_loss"]) for row in read_metrics(run_dir / "metrics.csv")]


# --------------------------------------------------------------------------------------------
# 1. Resuming is exact, at an epoch boundary and inside an epoch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_two_epochs_then_resume_to_four_equals_four_straight(tiny_idx_dir, tmp_path, capsys, binarize):
    data_dir = tiny_idx_dir(n_train=40, n_test=8)
    binarize_args = ("--binarize", binarize)
    assert run(train_args(data_dir, tmp_path / "straight", "--epochs", "4", *binarize_args), capsys)[0] == 0
    assert run(train_args(data_dir, tmp_path / "split", "--epochs", "2", *binarize_args), capsys)[0] == 0
    assert (
        run(["train", "--out", str(tmp_path / "split"), "--resume", "--epochs", "4", "--no-progress"], capsys)[0] == 0
    )
    assert_same_training(tmp_path / "straight", tmp_path / "split")


def stop_at_call(monkeypatch, call):
    """Send this process a real SIGTERM from inside the `call`-th training step's loss."""
    calls = []

    def then_signal(loss):
        def loss_then_signal(*args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                signal.raise_signal(signal.SIGTERM)
            return loss(*args, **kwargs)

        return loss_then_signal

    # autograd's path: the loop's ObjectiveModule calls objectives.compute once per step
    monkeypatch.setattr(objectives_module, "compute", then_signal(objectives_module.compute))
    # the kernel's path by hand: negative_elbo_gradients calls batch_negative_elbo once per step
    monkeypatch.setattr(mlp_elbo_module, "batch_negative_elbo", then_signal(mlp_elbo_module.batch_negative_elbo))


@pytest.mark.parametrize(
    "call, binarize, saved_at",
    [(3, "dynamic", (0, 3)), (5, "none", (1, 0)), (7, "none", (1, 2))],
    ids=["inside epoch 1", "on the last step of epoch 1", "inside epoch 2"],
)
def test_an_interrupted_run_resumes_bit_identically(
    tiny_idx_dir, tmp_path, capsys, monkeypatch, call, binarize, saved_at
):
    data_dir = tiny_idx_dir(n_train=40, n_test=8)  # 5 steps per epoch
    options = ("--epochs", "3", "--binarize", binarize)
    assert run(train_args(data_dir, tmp_path / "straight", *options), capsys)[0] == 0
    handler = signal.getsignal(signal.SIGTERM)
    stop_at_call(monkeypatch, call)
    code, out, _ = run(train_args(data_dir, tmp_path / "stopped", *options), capsys)
    monkeypatch.undo()
    assert code == 130 and f"vaelab train --out {tmp_path / 'stopped'} --resume" in out
    state = checkpoint.load(tmp_path / "stopped")
    assert (state["epoch"], state["step"]) == saved_at
    assert signal.getsignal(signal.SIGTERM) is handler  # the handler was handed back
    assert run(["train", "--out", str(tmp_path / "stopped"), "--resume", "--no-progress"], capsys)[0] == 0
    assert_same_training(tmp_path / "straight", tmp_path / "stopped")


# --------------------------------------------------------------------------------------------
# 2. SIGINT / SIGTERM to a real training process
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_training_with_a_checkpoint_and_a_resume_hint(tiny_idx_dir, tmp_path, capsys, signum):
    data_dir, out = tiny_idx_dir(n_train=800, n_test=8), tmp_path / "run"  # 100 steps per epoch
    argv = [sys.executable, "-m", "vaelab", *train_args(data_dir, out, "--epochs", "3", "--checkpoint-every", "10")]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    try:
        wait_for(out / "checkpoint.pt", process)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted: checkpoint saved" in stdout and f"--out {out} --resume" in stdout
    assert "Traceback" not in stderr
    state = checkpoint.load(out)
    assert 1 <= state["epoch"] * 100 + state["step"] < 300
    assert run(["train", "--out", str(out), "--resume", "--no-progress"], capsys)[0] == 0
    assert [row["epoch"] for row in read_metrics(out / "metrics.csv")] == [1, 2, 3]


def test_a_forwarded_copy_of_the_first_sigint_is_not_a_second_one(monkeypatch):
    """torchrun passes on the Ctrl-C its workers already got: that must not abort the checkpoint."""
    with guards_module.StopRequest() as stop:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        monkeypatch.setattr(guards_module.StopRequest, "REPEAT_AFTER_S", 0.0)  # as if the user pressed again later
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


# --------------------------------------------------------------------------------------------
# 3. kill -9 at any moment leaves the last complete checkpoint loadable
# --------------------------------------------------------------------------------------------


def _train_silently(argv):
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(1)
    main(argv)


def test_kill_9_at_random_moments_never_leaves_a_broken_checkpoint(tiny_idx_dir, tmp_path):
    """A forked `vaelab train --checkpoint-every 1` (resuming each time) is SIGKILLed at random moments."""
    data_dir, out = tiny_idx_dir(n_train=200, n_test=8), tmp_path / "run"  # 25 steps per epoch
    # Forked children start in milliseconds where a fresh interpreter would take seconds; one run
    # here first imports everything training needs, so that the children do not.
    assert main(train_args(data_dir, tmp_path / "warm-up", "--epochs", "1")) == 0
    context = multiprocessing.get_context("fork")
    delays = random.Random(0)
    progress, strays = [], 0
    for _ in range(12):
        resume = (out / "checkpoint.pt").exists()
        argv = train_args(
            data_dir, out, "--epochs", "1000", "--checkpoint-every", "1", "--resume" if resume else "--overwrite"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12 warns on fork with threads
            process = context.Process(target=_train_silently, args=(argv,))
            process.start()
        time.sleep(delays.uniform(0.0, 0.4))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        assert process.exitcode == -signal.SIGKILL
        temporaries = list(out.glob(".checkpoint.pt.*.tmp"))
        assert len(temporaries) <= 1  # at most the killed writer's; older ones were cleaned up
        strays += len(temporaries)
        if (out / "checkpoint.pt").exists():
            state = checkpoint.load(out)
            assert all(torch.isfinite(value).all() for value in state["model"].values())
            progress.append(state["epoch"] * 25 + state["step"])
    assert len(progress) >= 6 and progress == sorted(progress) and progress[-1] > 0, progress  # each restart resumed
    checkpoint.save(checkpoint.load(out), out / "checkpoint.pt")
    assert not list(out.glob(".checkpoint.pt.*.tmp")), (
        f"{strays} temporaries left by killed writers were not cleaned up"
    )


# --------------------------------------------------------------------------------------------
# 4. A non-finite loss stops training, naming the epoch, step and images
# --------------------------------------------------------------------------------------------


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    saved = []
    real_save = checkpoint.save

    def save_and_remember(state, path):
        real_save(state, path)
        saved.append(path.read_bytes())

    monkeypatch.setattr(checkpoint, "save", save_and_remember)
    config = TrainConfig(
        model=ModelSpec(input_dim=16, hidden=8, latent_dims=2), epochs=2, batch_size=8, lr=1e3, checkpoint_every=1
    )
    train_x = torch.rand(64, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        VaelabError, match=r"non-finite loss \((nan|inf)\) at epoch 1, step (\d+) \(images \["
    ) as raised:
        train(config, train_x, train_x[:8], tmp_path, progress=False)
    failed_step = int(re.search(r"step (\d+)", str(raised.value)).group(1))
    assert 1 <= failed_step == len(saved)  # one checkpoint per good step, then the failure
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved[-1]
    state = checkpoint.load(tmp_path)
    assert (state["epoch"], state["step"]) == (0, failed_step)
    assert all(torch.isfinite(value).all() for value in state["model"].values())


@pytest.mark.parametrize("checkpoint_every", [0, 3])
def test_on_an_accelerator_the_loss_is_read_every_few_steps_and_always_before_a_save(
    tmp_path, monkeypatch, checkpoint_every
):
    """The accelerators' cadence, run on the CPU: reads every 4 steps and before each save; the
    error names the unread steps, and every checkpoint written holds finite weights."""
    monkeypatch.setattr(loop_module, "LOSS_READ_EVERY", {"cpu": 4})
    saved = []
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda state, path: (real_save(state, path), saved.append(state)))
    config = TrainConfig(
        model=ModelSpec(input_dim=16, hidden=8, latent_dims=2),
        epochs=1,
        batch_size=8,
        lr=1e3,
        checkpoint_every=checkpoint_every,
    )
    train_x = torch.rand(160, 16, generator=torch.Generator().manual_seed(0))  # 20 steps
    with pytest.raises(
        VaelabError, match=r"non-finite loss \((nan|inf)\) at epoch 1, (one of steps|step) (\d+)"
    ) as raised:
        train(config, train_x, train_x[:8], tmp_path, progress=False)
    first, last = map(int, re.search(r"steps? (\d+)(?:-(\d+))?", str(raised.value)).groups(default="-1"))
    last = first if last == -1 else last
    reads_at = {
        step for step in range(20) if (step + 1) % 4 == 0 or (checkpoint_every and (step + 1) % checkpoint_every == 0)
    }
    assert last in reads_at and first == max([step + 1 for step in reads_at if step < last], default=0)
    for state in saved:
        assert all(torch.isfinite(value).all() for value in state["model"].values())
        assert state["step"] <= first


def test_a_non_finite_loss_through_the_cli_is_one_line(tiny_idx_dir, tmp_path, capsys):
    data_dir = tiny_idx_dir(n_train=64, n_test=8)
    line = refused(train_args(data_dir, tmp_path / "run", "--epochs", "1", "--lr", "1e3"), capsys, "non-finite loss")
    assert "at epoch 1, step" in line and "lower --lr" in line and "--detect-anomaly" in line


@pytest.mark.parametrize("bad_value, shown", [(float("nan"), "nan"), (255.0, "255.0"), (-0.5, "-0.5")])
def test_pixels_outside_0_1_are_refused_before_training(tmp_path, bad_value, shown):
    config = TrainConfig(model=ModelSpec(input_dim=16, hidden=8, latent_dims=2), epochs=1, batch_size=8)
    train_x = torch.rand(32, 16)
    train_x[17, 3] = bad_value
    with pytest.raises(VaelabError, match=rf"training image 17 has a pixel value {shown} outside \[0, 1\]"):
        train(config, train_x, torch.rand(8, 16), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# 6. Bad input through the CLI: one line, exit 2, an earlier run left as it was
# --------------------------------------------------------------------------------------------


def truncate_gzip(directory):
    path = directory / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:-40])


def corrupt_gzip(directory):
    path = directory / f"{TRAIN_IMAGES}.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def wrong_magic(directory):
    path = directory / f"{TEST_LABELS}.gz"
    path.write_bytes(gzip.compress(b"\x01\x02" + gzip.decompress(path.read_bytes())[2:]))


def label_count_mismatch(directory):
    path = directory / f"{TRAIN_LABELS}.gz"
    labels = gzip.decompress(path.read_bytes())
    # Declare one label fewer and drop the last one: a well-formed file that does not pair up.
    count = int.from_bytes(labels[4:8], "big")
    path.write_bytes(gzip.compress(labels[:4] + (count - 1).to_bytes(4, "big") + labels[8:-1]))


def missing_file(directory):
    (directory / f"{IDX_FILES[3]}.gz").unlink()


@pytest.mark.parametrize(
    "damage, match",
    [
        (truncate_gzip, "corrupt gzip data"),
        (corrupt_gzip, "corrupt gzip data"),
        (wrong_magic, "bad IDX magic 0102"),
        (label_count_mismatch, "15 labels for 16 images"),
        (missing_file, "IDX files not found"),
    ],
)
def test_bad_data_is_refused_and_the_earlier_run_is_left_intact(tiny_idx_dir, tmp_path, capsys, damage, match):
    good, bad, out = (
        tiny_idx_dir(n_train=16, n_test=8, gz=True),
        tiny_idx_dir(n_train=16, n_test=8, gz=True),
        tmp_path / "run",
    )
    assert run(train_args(good, out, "--epochs", "1"), capsys)[0] == 0
    before = snapshot(out)
    damage(bad)
    refused(train_args(bad, out, "--epochs", "1", "--overwrite"), capsys, match)
    assert snapshot(out) == before
    refused(train_args(bad, tmp_path / "new", "--epochs", "1"), capsys, match)
    assert not (tmp_path / "new").exists()  # no half-made run directory to trip over later


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
        (["--hidden", "0"], "--hidden must be >= 1 (got [0])"),  # one value per stochastic layer
        (["--latent-dim", "-3"], "--latent-dim must be >= 1 (got [-3])"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
        (["--train-size", "-1"], "--train-size must be >= 0"),
        (["--threads", "-2"], "--threads must be >= 0"),
        (["--device", "warp-drive"], "unknown --device 'warp-drive'"),
        (["--batch-size", "17"], "--batch-size 17 exceeds the 16 training images"),
    ],
)
def test_out_of_range_options_are_refused_and_the_earlier_run_is_left_intact(
    tiny_idx_dir, tmp_path, capsys, extra, match
):
    data_dir, out = tiny_idx_dir(n_train=16, n_test=8), tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"an earlier run")
    refused(train_args(data_dir, out, "--epochs", "1", "--overwrite", *extra), capsys, match)
    assert snapshot(out) == {"checkpoint.pt": b"an earlier run"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_refused(capsys):
    refused(["train", "--device", "cuda"], capsys, "--device cuda is not on this machine (devices here: cpu")


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--hidden", "32"], "these options differ from it: --hidden"),
        (["--latent-dim", "3", "--binarize", "dynamic"], "differ from it: --binarize, --latent-dim"),
        (["--epochs", "1"], "has already finished 1 epochs"),
    ],
)
def test_resume_refuses_options_that_change_the_run(tiny_idx_dir, tmp_path, capsys, extra, match):
    data_dir, out = tiny_idx_dir(n_train=16, n_test=8), tmp_path / "run"
    assert run(train_args(data_dir, out, "--epochs", "1"), capsys)[0] == 0
    before = snapshot(out)
    refused(["train", "--out", str(out), "--resume", "--epochs", "2", *extra], capsys, match)
    assert snapshot(out) == before


def test_resume_refuses_a_checkpoint_whose_weights_do_not_fit_its_config(tiny_idx_dir, tmp_path, capsys):
    data_dir, out = tiny_idx_dir(n_train=16, n_test=8), tmp_path / "run"
    assert run(train_args(data_dir, out, "--epochs", "1"), capsys)[0] == 0
    state = checkpoint.load(out)
    state["config"]["model"]["hidden"] = [32]  # ModelSpec.hidden: one width per stochastic layer
    checkpoint.save(state, out / "checkpoint.pt")
    refused(["train", "--out", str(out), "--resume", "--epochs", "2"], capsys, "another architecture")
    state["config"]["model"]["hidden"] = [16]
    del state["optimizer"]
    checkpoint.save(state, out / "checkpoint.pt")
    refused(["train", "--out", str(out), "--resume", "--epochs", "2"], capsys, "the checkpoint lacks optimizer")


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    refused(["train", "--out", str(tmp_path / "run"), "--resume"], capsys, "no checkpoint at")


def test_an_output_path_that_is_a_file_is_refused(tiny_idx_dir, tmp_path, capsys):
    data_dir, blocker = tiny_idx_dir(n_train=16, n_test=8), tmp_path / "file"
    blocker.write_text("keep me")
    refused(train_args(data_dir, blocker, "--epochs", "1"), capsys, "cannot write to")
    assert blocker.read_text() == "keep me"
