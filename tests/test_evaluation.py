"""The estimators against exact answers (a linear-Gaussian model), and their behaviour on tiny VAEs."""

import hashlib
import json
import math

import pytest
import torch
from torch.func import vmap

from vaelab import checkpoint, cli
from vaelab.cli import evaluate as evaluate_cli
from vaelab.config import ModelSpec, TrainConfig, to_dict
from vaelab.distributions import LOG_2PI, bernoulli_log_prob, log_normal_diag, log_standard_normal
from vaelab.evaluation import (
    Estimate,
    PrefixLogMeanExp,
    active_units,
    importance_weighted_bounds,
    importance_weighted_evaluation,
    iwae_from_log_weights,
    iwae_noise,
    laplace_evidence,
    laplace_importance_sampling,
    laplace_proposal,
    model_log_joint,
    newton_mode,
)
from vaelab.laplace import gaussian_log_evidence
from vaelab.kernels.mlp_elbo import batch_negative_elbo
from vaelab.models import VAE

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second thread gains nothing, and on a machine shared with other
    jobs every parallel region can wait a scheduler tick for it (measured: 300x slower steps)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# A linear-Gaussian model, p(z) = N(0, I), p(x|z) = N(Wz + b, s² I): log p(x) and p(z|x) are exact.
# --------------------------------------------------------------------------------------------


class LinearGaussian:
    def __init__(self, latent: int = 3, observed: int = 5, noise: float = 0.5, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.W = torch.randn(observed, latent, generator=generator, dtype=F64)
        self.b = torch.randn(observed, generator=generator, dtype=F64)
        self.s2 = noise**2
        self.generator = generator

    def sample_x(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.W.shape[1], generator=self.generator, dtype=F64)
        return (
            z @ self.W.T
            + self.b
            + math.sqrt(self.s2) * torch.randn(n, self.W.shape[0], generator=self.generator, dtype=F64)
        )

    def log_joint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x, z) for z (..., d), x broadcastable (..., P) -> (...)."""
        residual = x - z @ self.W.T - self.b
        observed, latent = self.W.shape
        return (
            -0.5 * residual.square().sum(-1) / self.s2
            - 0.5 * observed * math.log(2 * math.pi * self.s2)
            - 0.5 * z.square().sum(-1)
            - 0.5 * latent * LOG_2PI
        )

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        covariance = self.W @ self.W.T + self.s2 * torch.eye(self.W.shape[0], dtype=F64)
        return torch.distributions.MultivariateNormal(self.b, covariance).log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        precision = torch.eye(self.W.shape[1], dtype=F64) + self.W.T @ self.W / self.s2
        covariance = torch.linalg.inv(precision)
        return (x - self.b) @ self.W @ covariance / self.s2, covariance  # (B, d), (d, d)


def test_laplace_is_exact_on_a_gaussian_posterior():
    model = LinearGaussian()
    x = model.sample_x(4)
    mode = newton_mode(model.log_joint, torch.zeros(4, 3, dtype=F64), x)
    mean, covariance = model.posterior(x)
    assert bool(mode.converged.all())
    torch.testing.assert_close(mode.z, mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(mode.neg_hessian, torch.linalg.inv(covariance).expand(4, 3, 3), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        gaussian_log_evidence(mode.log_peak, mode.neg_hessian), model.log_evidence(x), rtol=0, atol=1e-10
    )


def test_laplace_importance_sampling_has_zero_variance_on_a_gaussian_posterior():
    model = LinearGaussian(seed=1)
    x = model.sample_x(4)
    mode = newton_mode(model.log_joint, torch.zeros(4, 3, dtype=F64), x)
    eps = torch.randn(4, 50, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    z, log_q = laplace_proposal(mode.z, mode.neg_hessian, eps)
    log_weights = model.log_joint(z, x.unsqueeze(1)) - log_q  # (4, 50)
    exact = model.log_evidence(x)
    torch.testing.assert_close(log_weights, exact.unsqueeze(1).expand(4, 50), rtol=0, atol=1e-10)
    for k, bound in iwae_from_log_weights(log_weights.T, [1, 7, 50]).items():
        torch.testing.assert_close(bound, exact, rtol=0, atol=1e-10, msg=f"k = {k}")


def test_importance_weighted_bounds_rise_towards_exact_log_evidence():
    model = LinearGaussian(seed=3)
    x = model.sample_x(3)
    exact = model.log_evidence(x)  # (3,)
    mean, covariance = model.posterior(x)
    # A deliberately poor proposal: shifted mean, mean-field variances.
    q_mean, q_std = mean + 0.3, covariance.diagonal().sqrt()
    replicates, k_max = 200, 1000
    generator = torch.Generator().manual_seed(4)
    eps = torch.randn(replicates, k_max, 3, 3, generator=generator, dtype=F64)  # (R, K, B, d)
    z = q_mean + q_std * eps
    log_q = -0.5 * (eps.square() + LOG_2PI).sum(-1) - q_std.log().sum()
    log_weights = model.log_joint(z, x) - log_q  # (R, K, B)
    ks = [1, 10, 100, 1000]
    bounds = [iwae_from_log_weights(log_weights[r], ks) for r in range(replicates)]
    gap = {}
    for k in ks:
        values = torch.stack([b[k] for b in bounds])  # (R, B)
        average, stderr = values.mean(0), values.std(0) / math.sqrt(replicates)
        assert bool((average <= exact + 3 * stderr + 1e-12).all()), f"L_{k} exceeds log p(x) beyond sampling error"
        gap[k] = float((exact - average).mean())
    assert gap[1] > gap[10] > gap[100] > gap[1000] > -0.01
    assert gap[1000] < 0.1 * gap[1]


def test_chunked_log_mean_exp_equals_one_pass():
    log_weights = 30 * torch.randn(257, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    ks = [1, 2, 50, 100, 257]
    whole = iwae_from_log_weights(log_weights, ks)
    for cuts in ([0, 1, 3, 99, 100, 200, 257], [0, 257], list(range(0, 257, 16)) + [257]):
        accumulator = PrefixLogMeanExp(ks, 5)
        for start, stop in zip(cuts[:-1], cuts[1:]):
            accumulator.update(log_weights[start:stop].T)
        for k in ks:
            torch.testing.assert_close(accumulator.bounds[k], whole[k], rtol=0, atol=1e-12)
    torch.testing.assert_close(whole[257], torch.logsumexp(log_weights, 0) - math.log(257))


# --------------------------------------------------------------------------------------------
# Tiny VAEs
# --------------------------------------------------------------------------------------------


def _prototype_images(n: int, pixels: int, seed: int) -> torch.Tensor:
    """Binary images: one of 4 random patterns with 5 % of the pixels flipped."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.bernoulli(torch.full((4, pixels), 0.3), generator=generator)
    images = patterns[torch.randint(0, 4, (n,), generator=generator)]
    flips = torch.bernoulli(torch.full((n, pixels), 0.05), generator=generator)
    return (images + flips) % 2


@pytest.fixture(scope="module")
def trained() -> tuple[VAE, torch.Tensor]:
    """A 64-32-4 VAE after 300 Adam steps on prototype images, and 48 held-out images."""
    torch.manual_seed(0)
    model = VAE(ModelSpec(input_dim=64, hidden=32, latent_dims=4))
    data = _prototype_images(560, 64, seed=1)
    train_x, test_x = data[:512], data[512:]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(300):
        x = train_x[torch.randint(0, 512, (32,), generator=generator)]
        q = model.posterior(x)
        logits = model.logits(q.rsample(torch.randn(32, 4, generator=generator)))
        reconstruction, kl = batch_negative_elbo(logits, x, q.mu, q.logvar)
        optimizer.zero_grad()
        (reconstruction + kl).backward()
        optimizer.step()
    return model.eval(), test_x


def test_fast_bounds_match_the_reference_log_weights(trained):
    model, x = trained
    ks = [1, 7, 300]
    result = importance_weighted_evaluation(model, x, ks, seed=5)
    eps = iwae_noise(5, x.shape[0], 300, 4).double().transpose(0, 1)  # (K, B, d)
    reference_model = VAE(model.spec).double()
    reference_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        q = reference_model.posterior(x.double())
        mu, logvar = q.mu, q.logvar
        z = mu + torch.exp(0.5 * logvar) * eps
        # log w = log p(x|z) + log p(z) - log q(z|x), written from the densities: (K, B)
        log_weights = (
            bernoulli_log_prob(reference_model.logits(z), x.double())
            + log_standard_normal(z)
            - log_normal_diag(z, mu, logvar)
        )
    reference = iwae_from_log_weights(log_weights, ks)
    for k in ks:
        assert result.bounds[k].mean == pytest.approx(float(reference[k].mean()), abs=1e-3)
        assert result.bounds[k].seconds > 0
    assert result.elbo.mean == pytest.approx(-(result.reconstruction.mean + result.kl.mean), abs=1e-9)


def test_chunking_over_samples_and_images_gives_the_same_bounds(trained):
    model, x = trained
    ks = [1, 10, 100, 600]
    reference = importance_weighted_bounds(model, x, ks, seed=2)
    for batch_size, max_bytes in ((1, 1 << 14), (5, 1 << 17), (48, 1 << 26), (0, 1 << 12)):
        chunked = importance_weighted_bounds(model, x, ks, seed=2, batch_size=batch_size, max_bytes=max_bytes)
        for k in ks:
            assert chunked[k].mean == pytest.approx(reference[k].mean, abs=1e-4), (batch_size, max_bytes, k)
            assert chunked[k].stderr == pytest.approx(reference[k].stderr, abs=1e-4)
    # The bounds for k do not depend on which other k are asked for.
    assert importance_weighted_bounds(model, x, [100], seed=2)[100].mean == pytest.approx(reference[100].mean, abs=1e-4)


def test_bounds_rise_with_k_on_average_over_draws(trained):
    model, x = trained
    ks = [1, 5, 25, 125]
    averages = torch.zeros(len(ks), dtype=F64)
    for seed in range(8):
        bounds = importance_weighted_bounds(model, x, ks, seed=seed)
        averages += torch.tensor([bounds[k].mean for k in ks], dtype=F64) / 8
    assert bool((averages.diff() > 0).all()), averages


def test_newton_only_ascends_and_laplace_is_consistent(trained):
    model, x = trained
    log_joint = model_log_joint(model)
    with torch.no_grad():
        mu = model.posterior(x).mu
    start = vmap(log_joint)(mu.double(), x.double())
    mode = newton_mode(log_joint, mu, x)
    assert bool((mode.log_peak >= start - 1e-9).all())
    assert float((mode.log_peak - start).mean()) > 0
    torch.testing.assert_close(vmap(log_joint)(mode.z, x.double()), mode.log_peak, rtol=0, atol=1e-9)
    result = laplace_evidence(model, x, batch_size=20)
    estimate, z_star, neg_hessian = result
    assert z_star.shape == (48, 4) and neg_hessian.shape == (48, 4, 4)
    assert estimate.mean == pytest.approx(float(result.log_evidence.mean()))
    # For a Bernoulli decoder -H = Jᵀ diag(σ(1 - σ)) J + I: at least the prior's curvature.
    assert float(torch.linalg.eigvalsh(neg_hessian).min()) >= 1 - 1e-9
    sampled = laplace_importance_sampling(model, x, 64, z_star=z_star, neg_hessian=neg_hessian)
    again = laplace_importance_sampling(model, x, 64, z_star=z_star, neg_hessian=neg_hessian)
    assert sampled.mean == again.mean and math.isfinite(sampled.stderr)


def test_newton_converges_on_a_smooth_non_gaussian_posterior():
    # Poisson counts with log-rate Wz: log p(x, z) is smooth and strictly concave, not quadratic.
    W = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 0.5
    x = torch.tensor([[1.0, 0, 3, 2, 0, 1], [5, 1, 0, 0, 2, 2]], dtype=F64)

    def log_joint(z: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        rate = W @ z
        return (counts * rate - rate.exp()).sum() - 0.5 * z.square().sum()

    mode = newton_mode(log_joint, torch.full((2, 2), 3.0, dtype=F64), x)
    assert bool(mode.converged.all())
    assert float(vmap(torch.func.grad(log_joint))(mode.z, x).abs().max()) < 1e-4
    # tol bounds the distance to the maximum in nats: a much tighter run gains less than tol.
    tighter = newton_mode(log_joint, torch.full((2, 2), 3.0, dtype=F64), x, tol=1e-15)
    assert float((tighter.log_peak - mode.log_peak).abs().max()) < 1e-9


def test_active_units_ignores_latents_the_encoder_mean_does_not_use():
    torch.manual_seed(0)
    model = VAE(ModelSpec(input_dim=64, hidden=32, latent_dims=6)).eval()
    head = model.encoder.net.head  # 2·6 outputs: mu rows first, then logvar
    with torch.no_grad():
        head.weight[:6] *= 20  # mu rows: clearly active ...
        head.weight[[1, 4]] = 0.0  # ... except mu_1 and mu_4, constant in x
    x = _prototype_images(200, 64, seed=2)
    count, variances = active_units(model, x)
    assert count == 4
    assert variances.shape == (6,)
    assert float(variances[[1, 4]].abs().max()) < 1e-20
    assert float(variances[[0, 2, 3, 5]].min()) > 0.01


def test_estimate_is_mean_and_standard_error():
    values = torch.tensor([1.0, 2.0, 3.0, 6.0])
    estimate = Estimate.from_values(values, 1.5)
    assert estimate.mean == 3.0
    assert estimate.stderr == pytest.approx(math.sqrt(14 / 3) / 2)
    assert math.isnan(Estimate.from_values(torch.tensor([1.0]), 0.0).stderr)


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A run directory with a 784-16-3 checkpoint in training's format; the split is 24 synthetic images."""
    torch.manual_seed(0)
    config = TrainConfig(model=ModelSpec(hidden=16, latent_dims=3), dataset="mnist", binarize="dynamic", epochs=1)
    model = VAE(config.model)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint.save(
        {"model": model.state_dict(), "config": to_dict(config), "epoch": 1, "step": 10},
        run_dir / checkpoint.CHECKPOINT_NAME,
    )
    images = torch.randint(0, 256, (24, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    requests = []

    def fake_load_split(train_config, split, data_dir):
        requests.append((train_config.dataset, split, data_dir))
        return images

    monkeypatch.setattr(evaluate_cli, "load_split", fake_load_split)
    return run_dir, requests


def test_cli_writes_eval_json(tiny_run, capsys):
    run_dir, requests = tiny_run
    assert (
        cli.main(["evaluate", "--checkpoint", str(run_dir), "--k", "10", "1", "--laplace-k", "8", "--size", "20"]) == 0
    )
    assert requests == [("mnist", "test", None)]
    result = json.loads((run_dir / "eval.json").read_text())
    for key in (
        "iwae",
        "laplace",
        "laplace_is",
        "active_units",
        "seed",
        "split",
        "binarization",
        "reconstruction",
        "kl",
        "checkpoint_sha256",
    ):
        assert key in result, key
    assert [row["k"] for row in result["iwae"]] == [1, 10]
    for row in (*result["iwae"], result["laplace"], result["laplace_is"]):
        assert row["mean"] < 0 and row["stderr"] > 0 and row["seconds"] >= 0
    assert result["laplace_is"]["k"] == 8
    assert result["binarization"] == "dynamic" and result["split"] == "test" and result["images"] == 20
    assert result["reconstruction"]["mean"] > 0 and result["kl"]["mean"] >= 0
    assert 0 <= result["active_units"] <= 3
    assert result["checkpoint_sha256"] == hashlib.sha256((run_dir / "checkpoint.pt").read_bytes()).hexdigest()
    output = capsys.readouterr()
    assert "L_10" in output.out and "Laplace-IS" in output.out and "warning" not in output.err
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_cli_grey_levels_warn_and_out_dir(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "elsewhere"
    assert (
        cli.main(
            [
                "evaluate",
                "--checkpoint",
                str(run_dir),
                "--k",
                "3",
                "--binarize",
                "none",
                "--no-laplace",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "eval.json").read_text())
    assert result["binarization"] == "none" and result["laplace"] is None and result["laplace_is"] is None
    assert "not a normalised density" in capsys.readouterr().err
    assert not (run_dir / "eval.json").exists()


def test_cli_refuses_a_size_beyond_the_split(tiny_run, capsys):
    run_dir, _ = tiny_run
    assert cli.main(["evaluate", "--checkpoint", str(run_dir), "--size", "25", "--no-laplace"]) == 2
    assert "--size 25 exceeds" in capsys.readouterr().err


def test_an_indefinite_curvature_is_replaced_by_its_magnitude_and_counted():
    """Where Newton stops short of a maximum, -H can be indefinite: |-H| keeps the eigenvectors and
    the eigenvalues' magnitudes; positive definite matrices pass unchanged."""
    from vaelab.evaluation.laplace import positive_definite

    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    indefinite = rotation @ torch.diag(torch.tensor([2.0, -0.5, 1.0], dtype=torch.float64)) @ rotation.T
    definite = torch.diag(torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64))
    repaired, count = positive_definite(torch.stack((definite, indefinite)))
    assert count == 1
    assert torch.equal(repaired[0], definite)
    expected = rotation @ torch.diag(torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)) @ rotation.T
    torch.testing.assert_close(repaired[1], expected, rtol=1e-12, atol=1e-12)
