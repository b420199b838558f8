"""bench/burda_baseline.py: its maths against torch.distributions, its export against vaelab's own model and
evaluator, and its budgeted training loop, on tiny synthetic data.

No timing is asserted beyond "a snapshot comes after its budget": the figures depend on the machine.
"""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vaelab import cli, data
from vaelab.checkpoint import load_model
from vaelab.cli import evaluate as evaluate_cli
from vaelab.evaluation import negative_elbo
from vaelab.models import build_model
from vaelab.objectives import elbo
from vaelab.presets import BURDA_ONE_LAYER

BENCH = Path(__file__).resolve().parents[1] / "bench" / "burda_baseline.py"
SEED = 3

pytestmark = pytest.mark.usefixtures("plain_torch")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("burda_baseline", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def binary_images(bench, n: int, seed: int = 0) -> torch.Tensor:
    """n synthetic images (n, 784) binarized by one seeded draw."""
    return torch.bernoulli(bench.synthetic_pixels(n), generator=torch.Generator().manual_seed(seed))


def exported(bench, tmp_path, model, seed: int = SEED):
    """The baseline `model` written by to_vaelab_checkpoint and read back by vaelab: (vaelab model, config)."""
    path = bench.to_vaelab_checkpoint(model.state_dict(), tmp_path / "export" / "best.pt", seed)
    return load_model(path)


def away_from_the_prior(model):
    """`model` with its posteriors moved off N(0, I) (means spread, variances shrunk), so that the KL is many
    nats, as in a trained model, rather than the fraction of a nat at initialisation."""
    with torch.no_grad():
        model.mu.weight.mul_(4.0)
        model.logvar.bias.sub_(1.5)
    return model


def log_density_gap(baseline, theirs, x: torch.Tensor, z: torch.Tensor) -> float:
    """The largest difference, in nats, between the baseline's and vaelab's log p(x|z), log p(z), log q(z|x)."""
    ours = baseline.log_densities(x, z)
    vaelab_terms = (theirs.log_likelihood(x, z), theirs.log_prior(z), theirs.posterior(x).log_prob(z))
    return max((a - b).abs().max().item() for a, b in zip(ours, vaelab_terms))


# --------------------------------------------------------------------------------------------
# The maths: against torch.distributions, and -ELBO against the log weights
# --------------------------------------------------------------------------------------------


def test_log_densities_and_kl_match_torch_distributions(bench):
    model = away_from_the_prior(bench.initial_model(SEED)).double()
    x = binary_images(bench, 6).double()
    mu, logvar = model.encode(x)
    eps = torch.randn(3, *mu.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = model.reparameterize(mu, logvar, eps)  # (3, 6, 50)
    log_px_given_z, log_pz, log_qz = model.log_densities(x, z)
    q = Normal(mu, torch.exp(0.5 * logvar))
    logits = model.decode(z)
    reference_px = torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    torch.testing.assert_close(log_px_given_z, reference_px, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(log_pz, Normal(0.0, 1.0).log_prob(z).sum(-1), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(log_qz, q.log_prob(z).sum(-1), rtol=1e-12, atol=1e-9)
    # -ELBO at one z = -log p(x|z) + the analytic KL
    kl = model.negative_elbo(x, eps) + log_px_given_z  # (3, 6), the same KL in every row
    reference_kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl, reference_kl.expand_as(kl), rtol=1e-12, atol=1e-9)


def test_negative_elbo_is_minus_the_mean_log_weight(bench):
    """E_eps[-ELBO(eps)] = -E_q[log w] (k = 1); with the same draws the two differ by the sampled KL minus the
    analytic one, whose mean is zero within its standard error."""
    model = away_from_the_prior(bench.initial_model(SEED)).double()
    x = binary_images(bench, 6).double()
    draws = 2000
    with torch.no_grad():
        log_w = model.log_weights(x, draws, torch.Generator().manual_seed(5))  # (K, B)
        mu, _ = model.encode(x)
        same_eps = torch.randn(draws, *mu.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        other_eps = torch.randn(draws, *mu.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        loss_same, loss_other = model.negative_elbo(x, same_eps), model.negative_elbo(x, other_eps)  # (K, B)

    def stderr(values: torch.Tensor) -> torch.Tensor:
        return values.std(dim=0) / draws**0.5

    # independent draws: the two Monte-Carlo means of the same expectation
    gap = loss_other.mean(0) + log_w.mean(0)
    assert (gap.abs() < 4 * (stderr(loss_other) ** 2 + stderr(log_w) ** 2).sqrt()).all(), gap
    # the same draws: -log w - (-ELBO) = (log q - log p(z)) - KL_analytic, per draw
    kl_gap = -log_w - loss_same  # (K, B)
    assert (kl_gap.mean(0).abs() < 4 * stderr(kl_gap)).all(), kl_gap.mean(0)
    assert (kl_gap.std(0) > 0).all()  # a sampled KL, not the analytic one twice


# --------------------------------------------------------------------------------------------
# The export: vaelab's model, loaded from the checkpoint, is the baseline's network
# --------------------------------------------------------------------------------------------


def test_exported_checkpoint_is_the_same_network_for_vaelab(bench, tmp_path):
    baseline = away_from_the_prior(bench.initial_model(SEED))
    theirs, config = exported(bench, tmp_path, baseline)
    assert config.model == BURDA_ONE_LAYER and config.binarize == "dynamic"
    assert (config.validation_size, config.batch_size, config.lr, config.seed) == (10_000, 100, 1e-3, SEED)
    x = binary_images(bench, 16)
    z = torch.randn(4, 16, 50, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert log_density_gap(baseline, theirs, x, z) < 1e-3
        eps = torch.randn(1, 16, 50, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(elbo(theirs, x, eps).loss, baseline.negative_elbo(x, eps[0]), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("mistake", ["heads swapped", "encoder weight transposed", "decoder weight transposed"])
def test_the_comparison_catches_a_wrong_mapping(bench, mistake):
    """The tolerance above is far below what a mis-mapped parameter does to the log-densities."""
    baseline = bench.initial_model(SEED)
    mapped = bench.vaelab_state_dict(baseline.state_dict())
    if mistake == "heads swapped":
        mapped["encoder.net.head.weight"] = mapped["encoder.net.head.weight"].roll(50, dims=0)
        mapped["encoder.net.head.bias"] = mapped["encoder.net.head.bias"].roll(50, dims=0)
    else:
        key = "encoder.net.trunk.2.weight" if mistake.startswith("encoder") else "likelihood.decoder.trunk.2.weight"
        mapped[key] = mapped[key].T.contiguous()
    theirs = vaelab_model(mapped)
    x = binary_images(bench, 16)
    z = torch.randn(4, 16, 50, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert log_density_gap(baseline, theirs, x, z) > 0.1


def vaelab_model(state_dict: dict) -> torch.nn.Module:
    """vaelab's burda-vae model holding `state_dict`."""
    model = build_model(BURDA_ONE_LAYER)
    model.load_state_dict(state_dict)
    return model.eval()


def test_validation_loss_is_vaelabs_validation_elbo(bench, tmp_path):
    """The same targets (one draw seeded seed + 2) and noise (seeded seed, in chunks of 2000) as vaelab's
    training uses for its validation -ELBO, so the baseline's number is vaelab's for the same network."""
    baseline = bench.initial_model(SEED)
    theirs, _ = exported(bench, tmp_path, baseline)
    valid_x = bench.synthetic_pixels(2300)  # two chunks
    targets, noise = bench.validation_set(valid_x, SEED)
    assert torch.equal(targets, data.binarize(valid_x, "dynamic", torch.Generator().manual_seed(SEED + 2)))
    reconstruction, kl = negative_elbo(theirs, targets, seed=SEED)
    assert bench.validation_loss(baseline, targets, noise) == pytest.approx(reconstruction + kl, rel=1e-5)


def test_vaelab_evaluate_reads_the_export(bench, tmp_path, monkeypatch):
    """`vaelab evaluate` accepts the file, binarizes dynamically, and its ELBO is the baseline's (Monte Carlo
    over the same images: within five standard errors)."""
    images = torch.randint(0, 256, (24, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(evaluate_cli, "load_split", lambda train_config, split, data_dir: images)
    baseline = bench.initial_model(SEED)
    path = bench.to_vaelab_checkpoint(baseline.state_dict(), tmp_path / "export" / "best.pt", SEED)
    argv = ["evaluate", "--checkpoint", str(path), "--k", "1", "200", "--no-laplace", "--no-progress"]
    assert cli.main(argv) == 0
    result = json.loads((path.parent / "eval.json").read_text())
    assert result["binarization"] == "dynamic" and result["images"] == 24
    # the test images as evaluate draws them: one Bernoulli draw seeded --seed (0)
    x = data.binarize(data.pixels(images), "dynamic", torch.Generator().manual_seed(0))
    draws = 2000
    with torch.no_grad():
        mu, _ = baseline.encode(x)
        eps = torch.randn(draws, *mu.shape, generator=torch.Generator().manual_seed(7))
        per_draw = -baseline.negative_elbo(x, eps).double()  # (K, N)
    ours = per_draw.mean().item()
    stderr = (per_draw.var(dim=0).sum() / 24**2 * (1 / draws + 1 / 200)).sqrt().item()
    assert abs(result["elbo"]["mean"] - ours) < 5 * stderr + 1e-3, (result["elbo"], ours, stderr)
    assert result["iwae"][1]["mean"] >= result["iwae"][0]["mean"] - 1.0  # L_200 is no looser than L_1


# --------------------------------------------------------------------------------------------
# Training for budgets
# --------------------------------------------------------------------------------------------


def test_train_for_snapshots_each_budget_in_order(bench):
    images = bench.synthetic_pixels(600)
    train_x, valid_x = images[:500], images[500:]
    calls = []

    def on_snapshot(budget_s, seconds, epochs, best_state, last_state):
        calls.append((budget_s, seconds, epochs, best_state, last_state))

    rows = bench.train_for([1.0, 0.5], train_x, valid_x, seed=SEED, threads=1, on_snapshot=on_snapshot)
    assert [call[0] for call in calls] == [0.5, 1.0] == [row["budget_s"] for row in rows]
    assert all(seconds >= budget for budget, seconds, *_ in calls)
    assert 0 < calls[0][2] < calls[1][2]  # epochs trained, increasing
    targets, noise = bench.validation_set(valid_x, SEED)
    initial = bench.validation_loss(bench.initial_model(SEED), targets, noise)
    for (_, _, _, best_state, last_state), row in zip(calls, rows):
        assert best_state.keys() == last_state.keys() == bench.BurdaVAE().state_dict().keys()
        best = bench.initial_model(0)
        best.load_state_dict(best_state)
        assert bench.validation_loss(best, targets, noise) == pytest.approx(row["valid_loss"], rel=1e-9)
        assert row["valid_loss"] < initial - 10.0
    assert rows[1]["valid_loss"] <= rows[0]["valid_loss"]


def test_a_budget_is_met_within_an_epoch(bench):
    """The budget is checked after every step: a short one ends the first epoch early, and the best model is
    then the current one, evaluated at that moment (no epoch has finished)."""
    images = bench.synthetic_pixels(5100)
    calls = []
    bench.train_for(
        [0.1],
        images[:5000],
        images[5000:],
        seed=SEED,
        threads=1,
        batch_size=5,
        on_snapshot=lambda *args: calls.append(args),
    )
    ((budget, seconds, epochs, best_state, last_state),) = calls
    assert seconds >= budget and 0 < epochs < 1
    assert all(torch.equal(best_state[key], last_state[key]) for key in best_state)


def test_main_quick_writes_a_checkpoint_and_a_row_per_budget(bench, tmp_path):
    out = tmp_path / "out"
    bench.main(["--quick", "--budgets", "0.2", "0.4", "--out", str(out), "--seed", str(SEED)])
    with open(out / "baseline.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [float(row["budget_s"]) for row in rows] == [0.2, 0.4]
    for row in rows:
        model, config = load_model(out / f"baseline-{float(row['budget_s']):g}s" / "best.pt")
        assert config.seed == SEED and config.model == BURDA_ONE_LAYER
        assert float(row["seconds"]) >= float(row["budget_s"]) and float(row["valid_loss"]) > 0
    assert json.loads((out / "baseline.json").read_text())["budgets"] == [0.2, 0.4]


# --------------------------------------------------------------------------------------------
# Resuming: the loop's state after an epoch continues the run with the same draws
# --------------------------------------------------------------------------------------------


class TickingClock:
    """A stand-in for the `time` module whose perf_counter advances a fixed 2^-6 s per call: exact binary
    fractions, so the seconds trained (differences of readings) do not depend on when the run started."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 2.0**-6
        return self.now


def train_on_a_fake_clock(bench, monkeypatch, tmp_path, *, resume=None, budgets=(0.5, 1.0), lr=1e-3):
    """train_for on 500 + 100 synthetic images, batch 50, under a TickingClock: (snapshots, epoch states), each
    state read back from the file `on_epoch` would be saved to, as the bench's main does."""
    monkeypatch.setattr(bench, "time", TickingClock())
    tmp_path.mkdir(parents=True, exist_ok=True)
    images = bench.synthetic_pixels(600)
    snapshots, states = [], []

    def on_epoch(state):
        path = tmp_path / f"state-{len(states)}.pt"
        bench.save_state(state, path)
        states.append(bench.load_state(path))

    bench.train_for(
        list(budgets),
        images[:500],
        images[500:],
        seed=SEED,
        threads=1,
        batch_size=50,
        lr=lr,
        on_snapshot=lambda *args: snapshots.append(args),
        on_epoch=on_epoch,
        resume=resume,
    )
    return snapshots, states


def test_train_for_resumed_after_an_epoch_ends_bit_for_bit_as_the_run_straight_through(bench, monkeypatch, tmp_path):
    straight, states = train_on_a_fake_clock(bench, monkeypatch, tmp_path / "a")
    assert len(states) >= 4 and [state["epochs"] for state in states] == list(range(1, len(states) + 1))
    assert [snapshot[0] for snapshot in straight] == [0.5, 1.0]
    # resume after epoch 2 (before the first budget's snapshot) and after the last state (after it)
    for saved in (states[1], states[-1]):
        assert saved["trained"] < 1.0
        resumed, _ = train_on_a_fake_clock(bench, monkeypatch, tmp_path / "b", resume=saved)
        done_before = len(saved["rows"])
        assert len(resumed) == 2 - done_before
        for ours, theirs in zip(resumed, straight[done_before:]):
            assert ours[:3] == theirs[:3]  # budget, seconds trained, epochs: the same floats
            for state_ours, state_theirs in zip(ours[3:], theirs[3:]):  # the best and the last weights
                assert state_ours.keys() == state_theirs.keys()
                assert all(torch.equal(state_ours[key], state_theirs[key]) for key in state_ours)
    assert states[1]["rows"] == [] and len(states[-1]["rows"]) == 1  # both cases were met


def test_train_for_refuses_a_state_of_other_settings(bench, monkeypatch, tmp_path):
    _, states = train_on_a_fake_clock(bench, monkeypatch, tmp_path, budgets=(0.3,))
    with pytest.raises(ValueError, match="other lr .*resume with the same settings"):
        train_on_a_fake_clock(bench, monkeypatch, tmp_path, budgets=(0.3,), lr=3e-4, resume=states[0])


def test_main_resume_continues_a_saved_state_and_refuses_to_start_over_it(bench, tmp_path):
    """main --resume picks the run up from OUT/baseline-state.pt (here one made after the first epoch of the
    same quick run), writes every budget, and removes the state; a plain rerun beside a state is refused."""
    out = tmp_path / "out"
    out.mkdir()
    images = bench.synthetic_pixels(600)
    states = []
    bench.train_for(
        [0.2, 0.4],
        images[:500],
        images[500:],
        seed=SEED,
        threads=1,
        on_snapshot=lambda *args: None,
        on_epoch=lambda state: states.append(state) if not states else None,
    )
    bench.save_state(states[0], out / bench.STATE_FILE)
    argv = ["--quick", "--budgets", "0.2", "0.4", "--out", str(out), "--seed", str(SEED)]
    with pytest.raises(SystemExit, match="pass --resume to continue it"):
        bench.main(argv)
    bench.main([*argv, "--resume"])
    with open(out / "baseline.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [float(row["budget_s"]) for row in rows] == [0.2, 0.4]
    assert all(float(row["epochs"]) > states[0]["epochs"] for row in rows)  # counted on from the saved epoch
    assert not (out / bench.STATE_FILE).exists()
    with pytest.raises(SystemExit, match="nothing to continue; drop --resume"):
        bench.main([*argv, "--resume"])
