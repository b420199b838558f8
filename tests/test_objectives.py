"""Every registered model's log p(x, z) and the objectives against references: exact evidences of
linear-Gaussian models (depth 0, Gaussian likelihood), torch.distributions, and Monte Carlo with
stated tolerances (a few standard errors)."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal

from vaelab.config import ModelSpec, ObjectiveSpec
from vaelab.evaluation import importance_weighted_evaluation, laplace_evidence, laplace_importance_sampling
from vaelab.models import MODELS, build_model
from vaelab.objectives import dreg, elbo, iwae, kl_weight_at

P, SIGMA = 5, 0.6
# One spec per (model class, prior): every registered model.
REGISTERED = {
    "vae": dict(latent_dims=2),
    "vae-vamp": dict(latent_dims=2, prior="vamp", pseudo_inputs=3),
    "two-layer": dict(latent_dims=(3, 2)),
    "two-layer-vamp": dict(latent_dims=(3, 2), prior="vamp", pseudo_inputs=3),
}


pytestmark = pytest.mark.usefixtures("float64_default")


def linear_gaussian(name, seed=0, broad=False):
    """The model `name` with linear maps (depth 0) and p(x|z) = N(W h + b, σ² I): log p(x) in closed form.

    With two layers, p(z1|z2)'s variance is made constant (its log-variance rows zeroed), so
    z1 | z2 is linear-Gaussian too. Returns (model, exact log p(x) as a function of x (B, P)).
    """
    torch.manual_seed(seed)
    spec = ModelSpec(input_dim=P, hidden=4, depth=0, likelihood="gaussian", likelihood_std=SIGMA, **REGISTERED[name])
    model = build_model(spec).double()
    if broad:
        broad_proposal(model)
    head = model.likelihood.decoder.head
    W, b = head.weight.detach(), head.bias.detach()
    with torch.no_grad():
        components = model.prior_components()
        if spec.layers == 2:
            d1 = spec.latent_dims[0]
            layer = model.decoder2.net.head
            layer.weight[d1:] = 0.0  # log-variance of p(z1|z2) independent of z2
            A, a, log_var1 = layer.weight[:d1].clone(), layer.bias[:d1].clone(), layer.bias[d1:].clone()
    top = spec.latent_dims[-1]
    if components is None:
        means, covariances = torch.zeros(1, top), torch.eye(top).expand(1, top, top)
    else:
        mu, logvar = components
        means, covariances = mu.detach(), torch.diag_embed(logvar.detach().exp())
    if spec.layers == 2:  # z1 = A z2 + a + noise
        means = means @ A.T + a
        covariances = A @ covariances @ A.T + torch.diag(log_var1.exp())
    x_means = means @ W.T + b  # (K, P)
    x_covariances = W @ covariances @ W.T + SIGMA**2 * torch.eye(P)

    def exact(x):
        log_probs = MultivariateNormal(x_means, x_covariances).log_prob(x.unsqueeze(-2))  # (B, K)
        return torch.logsumexp(log_probs, dim=-1) - math.log(x_means.shape[0])

    return model, exact


def broad_proposal(model):
    """Give q(z|x) (each layer's) the variance 2 I whatever x: an overdispersed importance sampler
    whose L_k reaches log p(x) within 20 000 samples, whatever the random encoder's variances."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("encoder") and name.endswith("head.weight"):
                parameter[parameter.shape[0] // 2 :] = 0.0
            if name.startswith("encoder") and name.endswith("head.bias"):
                parameter[parameter.shape[0] // 2 :] = math.log(2.0)
    return model


def data(n=3, seed=1):
    return torch.randn(n, P, generator=torch.Generator().manual_seed(seed))


def noise(k, n, d, seed=2):
    return torch.randn(k, n, d, generator=torch.Generator().manual_seed(seed))


def test_every_model_class_is_tested():
    assert {
        len(REGISTERED[name]["latent_dims"]) if isinstance(REGISTERED[name]["latent_dims"], tuple) else 1
        for name in REGISTERED
    } == set(MODELS)


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_log_joint_is_the_product_of_its_factors(name):
    """log p(x, z) against torch.distributions, each factor's parameters read from the model's networks."""
    torch.manual_seed(3)
    spec = ModelSpec(input_dim=P, hidden=6, **REGISTERED[name])
    model = build_model(spec).double()
    x = (torch.rand(4, P) > 0.5).double()
    z = torch.randn(7, 4, spec.latent_dim)
    with torch.no_grad():
        h = z[..., : spec.latent_dims[0]]
        expected = Independent(Bernoulli(logits=model.likelihood.decoder(h)), 1).log_prob(x)
        top = z[..., spec.latent_dims[0] :] if spec.layers == 2 else z
        if spec.prior == "vamp":
            mu, logvar = model.prior_components()
            prior = MixtureSameFamily(
                Categorical(logits=torch.zeros(mu.shape[0])), Independent(Normal(mu, (0.5 * logvar).exp()), 1)
            )
        else:
            prior = Independent(Normal(torch.zeros(top.shape[-1]), 1.0), 1)
        expected = expected + prior.log_prob(top)
        if spec.layers == 2:
            mu1, logvar1 = model.decoder2(top)
            expected = expected + Independent(Normal(mu1, (0.5 * logvar1).exp()), 1).log_prob(h)
        torch.testing.assert_close(model.log_joint(x, z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_the_posterior_log_prob_is_the_density_of_its_draws(name):
    """q(z|x)'s log_prob against torch.distributions at the points rsample maps the noise to."""
    torch.manual_seed(4)
    spec = ModelSpec(input_dim=P, hidden=6, **REGISTERED[name])
    model = build_model(spec).double()
    x, eps = (torch.rand(4, P) > 0.5).double(), torch.randn(5, 4, spec.latent_dim)
    with torch.no_grad():
        posterior = model.posterior(x)
        z = posterior.rsample(eps)
        d1 = spec.latent_dims[0]
        mu1, logvar1 = (model.encoder if spec.layers == 1 else model.encoder1)(x)
        expected = Independent(Normal(mu1, (0.5 * logvar1).exp()), 1).log_prob(z[..., :d1])
        if spec.layers == 2:
            mu2, logvar2 = model.encoder2(z[..., :d1])
            expected = expected + Independent(Normal(mu2, (0.5 * logvar2).exp()), 1).log_prob(z[..., d1:])
        torch.testing.assert_close(posterior.log_prob(z), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(posterior.log_prob_stopped(z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_iwae_approaches_the_exact_evidence_from_below(name):
    model, exact = linear_gaussian(name, broad=True)
    x = data()
    with torch.no_grad():
        bounds = {k: -iwae(model, x, noise(k, 3, model.latent_dim)).loss for k in (1, 10, 20_000)}
    log_px = exact(x)
    assert (bounds[1] < log_px + 2.0).all()  # a single draw's log w scatters about the ELBO, below log p(x)
    # The bias of L_k shrinks as 1/k; with k = 20 000 these tiny models are within 0.1 nats (measured: 0.09 at worst).
    torch.testing.assert_close(bounds[20_000], log_px, rtol=0, atol=0.1)


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_evaluation_through_the_interface_reaches_the_exact_evidence(name):
    model, exact = linear_gaussian(name, broad=True)
    x = data(6)
    result = importance_weighted_evaluation(model, x, (1, 20_000), seed=5)
    assert abs(result.bounds[20_000].mean - float(exact(x).mean())) < 0.1
    assert result.bounds[1].mean < result.bounds[20_000].mean
    assert math.isclose(result.elbo.mean, result.bounds[1].mean, abs_tol=4 * result.bounds[1].stderr + 0.5)


@pytest.mark.parametrize("name", ["vae", "two-layer"])
def test_laplace_is_exact_where_the_posterior_is_gaussian(name):
    """Linear-Gaussian with a Gaussian prior: log p(x, z) is quadratic in the joint latent, so
    Laplace's evidence is log p(x) itself and Laplace-proposal sampling has zero variance."""
    model, exact = linear_gaussian(name)
    x = data(4)
    evidence = laplace_evidence(model, x)
    torch.testing.assert_close(evidence.log_evidence.double(), exact(x), rtol=0, atol=1e-8)
    sampled = laplace_importance_sampling(model, x, 5, z_star=evidence.z_star, neg_hessian=evidence.neg_hessian)
    assert abs(sampled.mean - float(exact(x).mean())) < 1e-8


def test_the_elbo_is_the_evidence_minus_the_kl_to_the_true_posterior():
    """Derivation (a) through the model: E_eps[-loss] = log p(x) - KL(q || p(z|x)), by Monte Carlo."""
    model, exact = linear_gaussian("vae")
    x = data(1)
    W, b = model.likelihood.decoder.head.weight.detach(), model.likelihood.decoder.head.bias.detach()
    precision = torch.eye(2) + W.T @ W / SIGMA**2
    covariance = torch.linalg.inv(precision)
    true_posterior = MultivariateNormal(covariance @ W.T @ (x[0] - b) / SIGMA**2, covariance)
    with torch.no_grad():
        q = model.posterior(x)
        q_distribution = MultivariateNormal(q.mu[0], torch.diag(q.logvar[0].exp()))
        expected = exact(x)[0] - torch.distributions.kl_divergence(q_distribution, true_posterior)
        draws = -elbo(model, x.expand(200_000, P), noise(1, 200_000, 2)).loss
    assert abs(draws.mean() - expected) < 4 * draws.std() / math.sqrt(draws.numel())


def test_the_monte_carlo_kl_averages_to_the_analytic_one():
    torch.manual_seed(6)
    model = build_model(ModelSpec(input_dim=P, hidden=6, latent_dims=3)).double()
    x = (torch.rand(1, P) > 0.5).double().expand(100_000, P)
    with torch.no_grad():
        posterior = model.posterior(x)
        z = posterior.rsample(noise(1, 100_000, 3)[0])
        sampled = posterior.log_prob(z) - model.log_prior(z)
        analytic = model.analytic_kl(posterior)[0]
    assert abs(sampled.mean() - analytic) < 4 * sampled.std() / math.sqrt(sampled.numel())


def test_beta_weights_the_kl_and_warm_up_raises_it_linearly():
    torch.manual_seed(7)
    model = build_model(ModelSpec(input_dim=P, hidden=6, latent_dims=2)).double()
    x, eps = (torch.rand(4, P) > 0.5).double(), noise(1, 4, 2)
    plain, weighted = elbo(model, x, eps), elbo(model, x, eps, kl_weight=2.5)
    torch.testing.assert_close(weighted.loss, plain.reconstruction + 2.5 * plain.kl)
    warm = ObjectiveSpec(name="beta", beta=2.0, warmup_epochs=4)
    assert [kl_weight_at(warm, t) for t in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert kl_weight_at(ObjectiveSpec(), 0.0) == 1.0


@pytest.mark.parametrize("name", ["vae", "two-layer-vamp"])
def test_dreg_has_iwae_s_model_gradient_and_its_expected_encoder_gradient(name):
    """DReG changes only the encoder's gradient estimator: the decoder's is IWAE's draw for draw,
    and the encoder's agrees with IWAE's in expectation (both are unbiased for ∇L_k)."""
    torch.manual_seed(8)
    spec = ModelSpec(input_dim=P, hidden=6, **REGISTERED[name])
    model = build_model(spec).double()
    replicas, k = 20_000, 4
    x = (torch.rand(1, P) > 0.5).double().expand(replicas, P)
    eps = noise(k, replicas, spec.latent_dim)

    def gradients(objective):
        model.zero_grad(set_to_none=True)
        terms = objective(model, x, eps)
        (terms.surrogate / replicas).backward()
        return terms, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    iwae_terms, iwae_grads = gradients(iwae)
    dreg_terms, dreg_grads = gradients(dreg)
    torch.testing.assert_close(dreg_terms.loss, iwae_terms.loss.detach())
    decoder = [n for n in iwae_grads if n.startswith(("likelihood.", "decoder2."))]
    encoder = [n for n in iwae_grads if n.startswith(("encoder", "prior."))]
    assert decoder and encoder
    for n in decoder:
        torch.testing.assert_close(dreg_grads[n], iwae_grads[n], rtol=1e-10, atol=1e-12, msg=n)
    flat_iwae = torch.cat([iwae_grads[n].flatten() for n in encoder])
    flat_dreg = torch.cat([dreg_grads[n].flatten() for n in encoder])
    # Means over 20 000 replicas: agree to a few percent of the gradient's norm.
    assert (flat_dreg - flat_iwae).norm() < 0.1 * flat_iwae.norm()
    assert not torch.allclose(flat_dreg, flat_iwae)  # a different estimator, draw for draw
