"""The training loop's behaviour on tiny synthetic data: it learns, it checkpoints, it resumes."""

import dataclasses
import math

import pytest
import torch

from vaelab import checkpoint
from vaelab.config import ModelSpec, TrainConfig
from vaelab.errors import VaelabError
from vaelab.evaluation import negative_elbo
from vaelab.models import VAE
from vaelab.training import METRICS_COLUMNS, initial_model, read_metrics, train

SMALL = ModelSpec(input_dim=16, hidden=12, latent_dims=2)


def prototypes(n, seed=0):
    """Binary 16-pixel images: noisy copies of two prototypes, so a 2-D latent can explain them."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.tensor([[1.0] * 8 + [0.0] * 8, [0.0] * 8 + [1.0] * 8])
    which = torch.randint(0, 2, (n,), generator=generator)
    flips = torch.rand(n, 16, generator=generator) < 0.05
    return (base[which] + flips).remainder(2)


def config(**changes):
    return TrainConfig(**{"model": SMALL, "epochs": 2, "batch_size": 16, "lr": 1e-2, **changes})


def test_training_lowers_the_test_loss_below_the_untrained_model():
    train_x, test_x = prototypes(256), prototypes(64, seed=1)
    torch.manual_seed(1)
    untrained = sum(negative_elbo(VAE(SMALL), test_x, seed=1))
    result = train(config(epochs=5), train_x, test_x, progress=False)
    losses = [row["test_loss"] for row in result.history]
    assert losses[-1] < losses[0] < untrained
    assert losses[-1] < 0.5 * untrained


def test_a_training_step_changes_the_weights_and_evaluation_does_not():
    train_x, test_x = prototypes(32), prototypes(16, seed=1)
    run = config(epochs=1, seed=7)  # not the global seed 1, so `before` is this run's own start, not a coincidence
    before = {name: value.clone() for name, value in initial_model(run).state_dict().items()}
    model = train(run, train_x, test_x, progress=False).model
    after = {name: value.clone() for name, value in model.state_dict().items()}
    assert all(not torch.equal(before[name], after[name]) for name in before)
    rng = torch.get_rng_state()
    negative_elbo(model, test_x, seed=3)
    assert all(torch.equal(after[name], value) for name, value in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_writes_metrics_and_a_loadable_checkpoint(tmp_path):
    result = train(config(), prototypes(64), prototypes(16, seed=1), tmp_path, progress=False)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,train_loss,test_loss,test_rec,test_kl,seconds")
    assert [row["epoch"] for row in rows] == [1, 2]
    for row, remembered in zip(rows, result.history):
        assert set(row) == set(METRICS_COLUMNS)
        assert row["test_loss"] == pytest.approx(row["test_rec"] + row["test_kl"], abs=1e-5)
        assert row["test_loss"] == pytest.approx(remembered["test_loss"], abs=1e-5)
    state = checkpoint.load(tmp_path)
    assert state["epoch"] == 2 and state["step"] == 0
    model = VAE(SMALL)
    model.load_state_dict(state["model"])
    assert torch.equal(model.likelihood.decoder.head.weight, result.model.likelihood.decoder.head.weight)


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_resume_at_an_epoch_boundary_is_exact(tmp_path, binarize):
    train_x, test_x = torch.rand(64, 16), torch.rand(16, 16)
    straight = train(config(epochs=3, binarize=binarize), train_x, test_x, tmp_path / "a", progress=False)
    train(config(epochs=1, binarize=binarize), train_x, test_x, tmp_path / "b", progress=False)
    state = checkpoint.load(tmp_path / "b")
    resumed = train(
        config(epochs=3, binarize=binarize), train_x, test_x, tmp_path / "b", resume_state=state, progress=False
    )
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert [row["train_loss"] for row in straight.history] == [row["train_loss"] for row in resumed.history]


def test_batch_larger_than_the_data_is_refused():
    with pytest.raises(VaelabError, match="--batch-size 128 exceeds the 10 training images"):
        train(config(batch_size=128), prototypes(10), prototypes(4), progress=False)


def test_resuming_another_architecture_is_refused(tmp_path):
    train(config(epochs=1), prototypes(32), prototypes(8), tmp_path, progress=False)
    state = checkpoint.load(tmp_path)
    other = config(model=ModelSpec(input_dim=16, hidden=5, latent_dims=2))
    with pytest.raises(VaelabError, match="another architecture"):
        train(other, prototypes(32), prototypes(8), tmp_path, resume_state=state, progress=False)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside torch.compile
def test_a_compiled_objective_trains_as_the_eager_one():
    """--compile runs the same objective through torch.compile: the same batches and noise, so the
    losses agree to float rounding (compiled kernels may sum in another order)."""
    generator = torch.Generator().manual_seed(0)
    train_x, test_x = (torch.rand(64, 16, generator=generator) > 0.5).float(), torch.rand(16, 16, generator=generator)
    two_layers = ModelSpec(input_dim=16, hidden=12, latent_dims=(3, 2), activation="tanh")
    eager = train(config(model=two_layers), train_x, test_x, progress=False)
    compiled = train(config(model=two_layers, compile=True), train_x, test_x, progress=False)
    for row_eager, row_compiled in zip(eager.history, compiled.history, strict=True):
        assert row_compiled["train_loss"] == pytest.approx(row_eager["train_loss"], rel=1e-4)


def test_validation_keeps_the_best_model_beside_the_last(tmp_path):
    """The last V training images are held out; best.pt is the checkpoint of the lowest validation -ELBO."""
    train_x, test_x = prototypes(96), prototypes(16, seed=1)
    result = train(config(epochs=4, validation_size=32, lr=3e-2), train_x, test_x, tmp_path, progress=False)
    losses = [row["valid_loss"] for row in result.history]
    assert all(math.isfinite(loss) for loss in losses)
    best = checkpoint.load(tmp_path / "best.pt")
    assert best["epoch"] == 1 + losses.index(min(losses))
    # The held-out images are the last 32: the validation -ELBO of best.pt's model on them is the recorded one.
    model = VAE(SMALL)
    model.load_state_dict(best["model"])
    assert sum(negative_elbo(model, train_x[-32:], seed=1)) == pytest.approx(min(losses), rel=1e-6)
    assert [row["valid_loss"] for row in read_metrics(tmp_path / "metrics.csv")] == pytest.approx(losses, abs=1e-5)


def test_patience_stops_when_validation_stops_improving(tmp_path):
    train_x, test_x = prototypes(64), prototypes(16, seed=1)
    frozen = config(epochs=5, validation_size=16, patience=2, lr=1e-30)  # the weights do not move
    result = train(frozen, train_x, test_x, tmp_path, progress=False)
    assert result.stopped == "early" and len(result.history) == 3  # epoch 1 is best; 2 and 3 are not better
    with pytest.raises(VaelabError, match="--patience stops on the validation -ELBO"):
        config(patience=2)


def test_cosine_schedule_runs_from_lr_to_lr_final():
    from vaelab.training.schedule import learning_rate_at

    cosine = config(epochs=4, lr=1e-2, lr_schedule="cosine", lr_final=1e-4)
    assert learning_rate_at(cosine, 0) == pytest.approx(1e-2)
    assert learning_rate_at(cosine, 0.5) == pytest.approx((1e-2 + 1e-4) / 2)
    assert learning_rate_at(cosine, 1) == pytest.approx(1e-4)
    result = train(cosine, prototypes(64), prototypes(16, seed=1), progress=False)
    expected = [learning_rate_at(cosine, e / 4) for e in (1, 2, 3, 4)]
    assert [row["lr"] for row in result.history] == pytest.approx(expected)
    assert learning_rate_at(config(), 0.75) == 1e-2  # constant


def test_resume_carries_the_validation_record(tmp_path):
    train_x, test_x = torch.rand(96, 16), torch.rand(16, 16)
    settings = dict(validation_size=32, patience=3, binarize="dynamic")
    straight = train(config(epochs=3, **settings), train_x, test_x, tmp_path / "a", progress=False)
    train(config(epochs=1, **settings), train_x, test_x, tmp_path / "b", progress=False)
    resumed = train(
        config(epochs=3, **settings),
        train_x,
        test_x,
        tmp_path / "b",
        resume_state=checkpoint.load(tmp_path / "b"),
        progress=False,
    )
    assert [row["valid_loss"] for row in straight.history] == [row["valid_loss"] for row in resumed.history]
    assert checkpoint.load(tmp_path / "a" / "best.pt")["epoch"] == checkpoint.load(tmp_path / "b" / "best.pt")["epoch"]


def test_a_time_budget_stops_after_the_epoch_that_spends_it():
    result = train(config(epochs=50, max_seconds=1e-9), prototypes(32), prototypes(8, seed=1), progress=False)
    assert result.stopped == "budget" and len(result.history) == 1


def test_every_preset_is_a_valid_config_with_its_name_recorded():
    from vaelab.presets import BEST_OF, PRESETS, preset_config

    for name, preset in PRESETS.items():
        config_ = preset_config(name)
        assert config_.preset == name and config_.model == preset.config.model
        if config_.model.likelihood in ("logistic", "logistic-mixture"):  # 8-bit pixels: the levels themselves
            assert (config_.binarize, config_.validation_size) == ("none", 10_000)
        elif name != "pytorch-example":  # the likelihood presets follow the literature's protocol
            assert (config_.binarize, config_.validation_size) == ("dynamic", 10_000)
    assert preset_config("pytorch-example") == TrainConfig(preset="pytorch-example")
    # `best` is its measured winner with the measured budget, nothing else changed
    best, source = PRESETS["best"].config, PRESETS[BEST_OF].config
    assert best.max_seconds == 116 * 60 and dataclasses.replace(best, max_seconds=source.max_seconds) == source
    with pytest.raises(VaelabError, match="unknown --preset 'nope'; choose one of pytorch-example"):
        preset_config("nope")


def test_epochs_since_best_reads_the_history():
    from vaelab.training.state import epochs_since_best

    rows = [{"valid_loss": v} for v in (5.0, 3.0, 4.0, 3.0, 6.0)]
    assert epochs_since_best(rows) == 3  # the first of two equal minima counts
    assert epochs_since_best(rows[:2]) == 0
    assert epochs_since_best([{"valid_loss": math.nan}, {}]) == 2  # no validation: never a best
