"""vaelab.detection: each statistic's defining property, and OODDetector's fit / score / predict / save / load
on tiny synthetic images with tiny models."""

import json
import math
import zlib

import numpy as np
import pytest
import torch

from vaelab import OODDetector
from vaelab.config import ModelSpec
from vaelab.detection import statistics as stats
from vaelab.detection.detector import ORIENTATION_WEIGHT, VERSION
from vaelab.detection import values
from vaelab.errors import VaelabError
from vaelab.models import build_model

pytestmark = pytest.mark.usefixtures("plain_torch")
TWO_LAYERS = ModelSpec(latent_dims=(4, 2), hidden=(16, 8), depth=1)
ONE_LAYER = ModelSpec(latent_dims=(3,), hidden=(16,), depth=1)


def images(kind: str, count: int, seed: int) -> torch.Tensor:
    """uint8 (count, 28, 28): dark images with a bright square ("squares") or plain uniform noise ("noise")."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "noise":
        return torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)
    out = torch.randint(0, 30, (count, 28, 28), generator=generator, dtype=torch.uint8)
    for image, (row, column) in zip(out, torch.randint(2, 18, (count, 2), generator=generator).tolist()):
        image[row : row + 8, column : column + 8] = 230
    return out


@pytest.fixture(scope="module")
def fitted_model():
    """A two-layer VAE given 150 Adam steps of the ELBO on squares (threshold-binarized): enough to tell noise."""
    torch.manual_seed(0)
    model = build_model(TWO_LAYERS)
    x = (images("squares", 256, 0).reshape(256, -1) > 127).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.enable_grad():
        for step in range(150):
            eps = torch.randn(256, model.latent_dim, generator=torch.Generator().manual_seed(step))
            posterior = model.posterior(x)
            z = posterior.rsample(eps)
            loss = -(model.log_joint(x, z) - posterior.log_prob(z)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


# --- the statistics -----------------------------------------------------------------------------------------
def test_complexity_is_zlib_length_in_bits_and_corrects_the_likelihood():
    batch = images("squares", 3, 1).numpy()
    bits = stats.complexity_bits(batch)
    assert bits.tolist() == [8.0 * len(zlib.compress(image.tobytes(), 9)) for image in batch]
    assert stats.complexity_bits(np.zeros((1, 28, 28), np.uint8))[0] < bits.min()  # a constant image compresses
    bound = np.array([-100.0, -50.0, -10.0])
    np.testing.assert_allclose(stats.complexity_corrected(bound, bits), -bound / math.log(2) - bits)
    with pytest.raises(VaelabError, match="uint8"):
        stats.complexity_bits(batch.astype(np.float32))


def test_pure_statistics_follow_their_definitions():
    np.testing.assert_array_equal(stats.negative_log_likelihood(np.array([-3.0, -1.0])), [3.0, 1.0])
    np.testing.assert_array_equal(stats.likelihood_ratio(np.array([-3.0]), np.array([-5.0])), [2.0])
    np.testing.assert_array_equal(stats.likelihood_regret(np.array([-2.0]), np.array([-5.0])), [3.0])
    np.testing.assert_array_equal(stats.typicality_distance(np.array([1.0, 4.0]), 2.0), [1.0, 2.0])


def test_nats_per_code_bit_is_the_negative_bound_over_the_code_length():
    per_bit = stats.nats_per_code_bit(np.array([-100.0, -30.0]), np.array([1000.0, 120.0]))
    np.testing.assert_array_equal(per_bit, [0.1, 0.25])


def test_upside_down_gap_is_the_flipped_bound_less_the_bound():
    np.testing.assert_array_equal(stats.upside_down_gap(np.array([-90.0, -80.0]), np.array([-95.0, -70.0])), [-5, 10])


def test_orientation_classifier_is_antisymmetric_and_zero_on_images_equal_to_their_flip():
    rng = np.random.default_rng(0)
    classifier = stats.OrientationClassifier(rng.normal(size=5), 0.7)
    differences, gaps = rng.normal(size=(8, 5)), rng.normal(size=8)
    np.testing.assert_allclose(classifier.logit(-differences, -gaps), -classifier.logit(differences, gaps))
    assert classifier.logit(np.zeros((1, 5)), np.zeros(1))[0] == 0.0


def test_orientation_classifier_recovers_the_log_odds_of_a_planted_orientation():
    """Upright features t ~ N(m, I), so turned over -t ~ N(-m, I): the true log odds of upright is 2 m . t, and the
    fit (on the upright images alone) must find the weights 2 m, the gap's among them."""
    rng = np.random.default_rng(1)
    m = np.array([0.5, -0.3, 0.2, 0.4])  # the last: the gap's
    t = rng.normal(size=(40000, 4)) + m
    fitted = stats.OrientationClassifier.fit(t[:, :3], t[:, 3], penalty=1e-8)
    np.testing.assert_allclose(np.r_[fitted.weights, fitted.gap_weight], 2 * m, atol=0.04)


def test_orientation_fit_is_logistic_regression_on_the_images_and_their_flips():
    """At the fitted weights, the penalized loss of upright images (label 1) with their flips (label 0, features
    negated) is stationary: its gradient, by autograd, vanishes (the ridge sees the gap in units of gap_scale)."""
    rng = np.random.default_rng(2)
    differences, gaps = rng.normal(size=(300, 12)) + 0.2, rng.normal(size=300) - 0.5
    fitted = stats.OrientationClassifier.fit(differences, gaps, penalty=1e-2, gap_scale=4.0)
    w = torch.tensor(np.r_[fitted.weights, fitted.gap_weight], requires_grad=True)
    features = torch.from_numpy(np.c_[differences, gaps])
    both = torch.cat((features, -features))
    labels = torch.cat((torch.ones(300), torch.zeros(300))).double()
    ridge = (w[:-1] ** 2).sum() + (4.0 * w[-1]) ** 2  # the gap's weight in units of gap_scale
    loss = torch.nn.functional.binary_cross_entropy_with_logits(both @ w, labels) + 0.5e-2 * ridge
    loss.backward()
    assert w.grad.abs().max() < 1e-6  # L-BFGS stops where the loss no longer changes in float64


def test_conformal_p_values_are_uniform_on_exchangeable_scores_and_on_the_reference_itself():
    rng = np.random.default_rng(0)
    trials = [stats.conformal_p_values(np.sort(rng.normal(size=19)), rng.normal(size=1))[0] for _ in range(20000)]
    for level in (1 / 20, 5 / 20, 10 / 20):  # P(p <= j / (n + 1)) = j / (n + 1) exactly, over reference draws
        assert abs(np.mean(np.array(trials) <= level + 1e-12) - level) < 0.01
    reference = np.sort(rng.normal(size=999))
    assert stats.conformal_p_values(reference, np.array([10.0]))[0] == pytest.approx(1 / 1000)
    held_in = stats.conformal_p_values(reference, reference, held_in=True)  # each image counted once, not twice
    np.testing.assert_allclose(np.sort(held_in), np.arange(1, 1000) / 1000)


def test_fisher_combination_of_uniform_p_values_is_chi_squared_with_2m_degrees():
    rng = np.random.default_rng(1)
    combined = stats.fisher_combination([rng.uniform(size=200000) for _ in range(3)])
    assert abs(combined.mean() - 6) < 0.05 and abs(combined.var() - 12) < 0.2  # χ²_6: mean 6, variance 12
    assert stats.fisher_combination([np.array([1.0]), np.array([1.0])])[0] == 0.0


def test_residual_is_the_least_squares_residual_in_conditional_standard_deviations():
    rng = np.random.default_rng(2)
    given = rng.normal(size=(5000, 2)) * [30.0, 100.0] + [500.0, 1500.0]
    target = 0.3 * given[:, 0] + 0.05 * given[:, 1] + rng.normal(scale=4.0, size=5000)
    features = np.column_stack((target, given))
    density = stats.DensityOfStates.fit(features)
    design = np.column_stack((np.ones(5000), given))
    coefficients = np.linalg.lstsq(design, target, rcond=None)[0]
    residual = target - design @ coefficients
    np.testing.assert_allclose(
        density.residual(features, target=0, given=(1, 2)), residual / residual.std(ddof=1), rtol=1e-4, atol=1e-4
    )
    shifted = features[:3] + [20.0, 0.0, 0.0]  # 20 above the fit: 5 conditional standard deviations
    np.testing.assert_allclose(
        density.residual(shifted, 0, (1, 2)) - density.residual(features[:3], 0, (1, 2)), 5.0, rtol=0.02
    )


def test_typicality_test_flags_shifted_batches_only():
    rng = np.random.default_rng(0)
    fit = rng.normal(100, 5, 2000)
    same, shifted = rng.normal(100, 5, 500), rng.normal(90, 5, 500)  # the shifted set is *likelier*
    _, flags_same = stats.typicality_test(fit, same, batch_size=25, alpha=0.01)
    distances, flags_shifted = stats.typicality_test(fit, shifted, batch_size=25, alpha=0.01)
    assert flags_same.mean() <= 0.1 and flags_shifted.all() and distances.shape == (20,)


def test_density_of_states_is_the_fitted_gaussians_negative_log_density():
    rng = np.random.default_rng(0)
    fit = rng.normal(size=(4000, 2)) @ np.array([[3.0, 2.0], [0.0, 0.1]]) + np.array([100.0, 5.0])
    density = stats.DensityOfStates.fit(fit)
    points = rng.normal(size=(5, 2)) * 2 + np.array([100.0, 5.0])
    mean, covariance = fit.mean(0), np.cov(fit.T)
    centred = points - mean
    expected = 0.5 * np.einsum("ni,ij,nj->n", centred, np.linalg.inv(covariance), centred)
    expected += 0.5 * np.log(np.linalg.det(2 * np.pi * covariance))
    np.testing.assert_allclose(density.score(points), expected, rtol=1e-5)  # up to the 1e-9 ridge
    # Off the line the two statistics share, though each is typical alone: far more anomalous.
    assert density.score(np.array([[103.0, 3.0]]))[0] > density.score(np.array([[103.0, 7.0]]))[0] + 10


def test_bound_above_first_layer_is_a_bound_for_the_images_and_needs_two_layers(fitted_model):
    x = (images("squares", 8, 5).reshape(8, -1) > 127).float()
    above = values.bound_above_first_layer(fitted_model, x, k=64, seed=0)
    full = values.bounds(fitted_model, x, k=64, seed=0)["L_k"]
    assert above.shape == (8,) and np.isfinite(above).all()
    # Both bound log p(x); the first layer's posterior can only help (up to Monte Carlo noise).
    assert np.mean(full - above) > 0
    with pytest.raises(VaelabError, match="two stochastic layers"):
        values.bound_above_first_layer(build_model(ONE_LAYER), x, k=4, seed=0)


def test_refit_never_lowers_the_elbo(fitted_model):
    x = (images("noise", 6, 3).reshape(6, -1) > 127).float()
    elbo, refit = values.refit_elbo(fitted_model, x, steps=10, samples=4)
    assert (refit >= elbo).all() and (refit > elbo).any()
    assert all(parameter.grad is None for parameter in fitted_model.parameters())


# --- the detector ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "statistic",
    ["nll", "llr", "typicality", "dose", "complexity", "regret", "residual", "upside-down", "orientation", "combined"],
)
def test_detector_fitted_on_squares_flags_noise(fitted_model, statistic):
    detector = OODDetector(fitted_model, statistic, k=4, binarize="threshold", regret_steps=5)
    detector.fit(images("squares", 200, 10))
    inside, outside = images("squares", 60, 11), images("noise", 60, 12)
    scores = detector.score(inside)
    assert scores.shape == (60,) and scores.dtype == np.float64
    flagged_in, flagged_out = detector.predict(inside).mean(), detector.predict(outside).mean()
    # zlib sees squares and noise alike as incompressible noise here; the LLR needs a trained top layer; noise is
    # as likely upside down.
    if statistic not in ("complexity", "llr", "residual", "upside-down", "orientation"):
        assert flagged_out >= 0.9 and flagged_in <= 0.25, (flagged_in, flagged_out)


def test_scores_come_in_input_order_for_arrays_tensors_and_prepared_pixels(fitted_model):
    """Each image's noise is its position's, so a batch's first images score as the batch of those alone."""
    detector = OODDetector(fitted_model, "nll", k=4, binarize="threshold").fit(images("squares", 40, 10))
    batch = images("squares", 10, 20)
    scores = detector.score(batch)
    np.testing.assert_allclose(detector.score(batch.numpy()), scores)
    np.testing.assert_allclose(detector.score((batch.reshape(10, -1).float() / 255).numpy()), scores, rtol=1e-6)
    np.testing.assert_allclose(detector.score(batch[:4]), scores[:4], rtol=1e-6)
    shuffled = detector.score(batch.flip(0))[::-1]  # other noise (it follows the index), the same images
    assert not np.allclose(shuffled, scores) and np.corrcoef(shuffled, scores)[0, 1] > 0.8


@pytest.mark.parametrize(
    "statistic, binarize",
    [("dose", "threshold"), ("combined", "dynamic"), ("llr", "dynamic"), ("regret", "threshold")],
)
def test_an_image_s_values_do_not_depend_on_the_shard_it_is_computed_in(fitted_model, statistic, binarize):
    """Draws (noise, binarizations) are seeded by image index: values computed in two shards equal the whole
    pass's (the runner's need)."""
    detector = OODDetector(fitted_model, statistic, k=4, binarize=binarize, regret_steps=3, draws=3)
    x = detector.prepare(images("squares", 10, 20))
    whole = detector.values(x)
    parts = [detector.values(x[start:stop], first_image=start) for start, stop in ((0, 3), (3, 10))]
    for name, value in whole.items():
        torch.testing.assert_close(torch.cat([part[name] for part in parts]), value, rtol=1e-4, atol=1e-4)
    if binarize == "dynamic":  # three draws averaged: not the first draw's values alone
        single = OODDetector(fitted_model, statistic, k=4, binarize=binarize, draws=1).values(x)
        assert not torch.allclose(single["L_k"], whole["L_k"])


def test_p_values_are_uniform_on_the_fit_distribution(fitted_model):
    detector = OODDetector(fitted_model, "nll", k=4, binarize="threshold").fit(images("squares", 300, 30))
    p = detector.p_values(images("squares", 300, 31))
    assert ((p > 0) & (p <= 1)).all()
    assert abs(p.mean() - 0.5) < 0.08 and abs((p <= 0.2).mean() - 0.2) < 0.08
    assert detector.p_values(images("noise", 20, 32)).max() == pytest.approx(1 / 301)


@pytest.mark.parametrize("statistic", ["dose", "combined"])
def test_save_load_round_trip_and_refusal_for_another_model(fitted_model, tmp_path, statistic):
    detector = OODDetector(fitted_model, statistic, k=4, binarize="threshold", fpr=0.1).fit(images("squares", 80, 40))
    path = detector.save(tmp_path / "detector.json")
    loaded = OODDetector.load(path, fitted_model)
    batch = torch.cat((images("squares", 10, 41), images("noise", 10, 42)))
    np.testing.assert_array_equal(loaded.score(batch), detector.score(batch))
    assert (loaded.statistic, loaded.fpr, loaded.threshold) == (statistic, 0.1, detector.threshold)
    other = build_model(TWO_LAYERS)
    with pytest.raises(VaelabError, match="fitted for another model") as refused:
        OODDetector.load(path, other)
    assert "\n" not in str(refused.value) and "fit a new detector" in str(refused.value)


def test_refusals_name_the_fix(fitted_model, tmp_path):
    with pytest.raises(VaelabError, match="choose one of"):
        OODDetector(fitted_model, "entropy")
    with pytest.raises(VaelabError, match="two stochastic layers"):
        OODDetector(build_model(ONE_LAYER), "llr")
    with pytest.raises(VaelabError, match="'combined' fits on at least 14 images .* got 13; fit on more images"):
        OODDetector(fitted_model, k=2).fit(images("squares", 13, 0))
    with pytest.raises(VaelabError, match="not fitted"):
        OODDetector(fitted_model).score(images("squares", 2, 0))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(VaelabError, match="lacks"):
        OODDetector.load(tmp_path / "bad.json", fitted_model)
    saved = json.loads(
        OODDetector(fitted_model, "nll", k=2).fit(images("squares", 8, 0)).save(tmp_path / "d.json").read_text()
    )
    del saved["orientation"]
    (tmp_path / "old.json").write_text(json.dumps({**saved, "version": VERSION - 1}))  # as the last version wrote it
    with pytest.raises(VaelabError, match=f"detector of version {VERSION - 1}, not {VERSION}; fit a new detector"):
        OODDetector.load(tmp_path / "old.json", fitted_model)


def bars(count: int, seed: int) -> torch.Tensor:
    """uint8 (count, 28, 28): a bright bar in the top third, at a random row and length, a faint one below it."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.zeros(count, 28, 28, dtype=torch.uint8)
    for image, (row, length) in zip(out, torch.randint(1, 8, (count, 2), generator=generator).tolist()):
        image[row : row + 3, 4 : 12 + 2 * length] = 255
        image[row + 12 : row + 13, 6:22] = 255
    return out


@pytest.fixture(scope="module")
def bars_model():
    """A one-layer VAE given 200 Adam steps of the ELBO on bars: images with an up and a down."""
    torch.manual_seed(0)
    model = build_model(ONE_LAYER)
    x = (bars(256, 0).reshape(256, -1) > 127).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.enable_grad():
        for step in range(200):
            eps = torch.randn(256, model.latent_dim, generator=torch.Generator().manual_seed(step))
            posterior = model.posterior(x)
            loss = -(model.log_joint(x, posterior.rsample(eps)) - posterior.log_prob(posterior.rsample(eps))).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.mark.parametrize("statistic", ["upside-down", "orientation", "combined"])
def test_images_turned_upside_down_are_flagged_and_calibration_holds(bars_model, statistic):
    """The bars model knows up from down: its upside-down test and the orientation classifier flag flipped bars;
    combined keeps that power, and its p-values on fresh in-distribution images stay uniform (the threshold's
    false-positive rate holds)."""
    detector = OODDetector(bars_model, statistic, k=4, binarize="threshold", fpr=0.1).fit(bars(400, 1))
    inside, flipped = bars(200, 2), bars(200, 2).flip(1)
    assert detector.predict(flipped).mean() >= 0.9
    p = detector.p_values(inside)
    assert abs(p.mean() - 0.5) < 0.08 and detector.predict(inside).mean() <= 0.2
    if statistic == "combined":  # the flipped bars fail the orientation question, and both parts make the score
        parts = detector.part_p_values(detector.values(detector.prepare(flipped)))
        assert np.median(parts["p_orientation"]) < 0.01
        weighted = np.minimum(parts["p_typical"], np.minimum(1, ORIENTATION_WEIGHT * parts["p_orientation"]))
        np.testing.assert_allclose(detector.score(flipped), -np.log(weighted), rtol=1e-12)


def test_the_upside_down_test_needs_an_image():
    flat = build_model(ModelSpec(input_dim=30, latent_dims=(2,), hidden=(8,), depth=1))
    with pytest.raises(VaelabError, match="no image"):
        OODDetector(flat, "combined")
    OODDetector(flat, "dose")  # the others need no image


def test_the_command_line_offers_every_statistic_with_the_default_first():
    from vaelab.cli.detect import STATISTIC_NAMES
    from vaelab.detection import DEFAULT_STATISTIC, STATISTICS

    assert sorted(STATISTIC_NAMES) == sorted(STATISTICS) and STATISTIC_NAMES[0] == DEFAULT_STATISTIC


def test_pair_auroc_is_the_auroc_of_upright_against_upside_down_images():
    from vaelab.detection import detection_metrics

    logits = np.random.default_rng(3).normal(1.0, 2.0, size=500).round(1)  # ties too
    assert stats.pair_auroc(logits) == pytest.approx(detection_metrics(-logits, logits)["auroc"], abs=1e-12)


def test_the_gap_scale_is_chosen_by_held_out_orientation():
    """With a gap that orients every image and pixels that are noise, the cross-validation picks the scale that
    lets the gap's weight grow (the largest), and the classifier orients held-out images."""
    rng = np.random.default_rng(4)
    differences, gaps = rng.normal(size=(400, 30)), -np.abs(rng.normal(size=400))
    classifier = stats.OrientationClassifier.fit_selected(differences, gaps, penalty=1.0, gap_scales=(1e-3, 1.0))
    assert classifier.gap_scale == 1e-3 and classifier.gap_weight < 0
    fresh_differences, fresh_gaps = rng.normal(size=(200, 30)), -np.abs(rng.normal(size=200))
    assert stats.pair_auroc(classifier.logit(fresh_differences, fresh_gaps)) > 0.95


def test_orientation_turns_colour_images_over_along_their_height():
    """A colour model (C, H, W) = (3, 6, 5): the classifier's difference is x - x flipped along H in every channel,
    and where the channels' ink sits tells up from down, so flipped images are flagged."""
    model = build_model(ModelSpec(image_shape=(3, 6, 5), latent_dims=(2,), hidden=(8,), depth=1))
    generator = torch.Generator().manual_seed(5)

    def lit(count: int) -> torch.Tensor:  # red above, blue below, a random row each, on faint noise
        images = torch.randint(0, 30, (count, 3, 6, 5), generator=generator, dtype=torch.uint8)
        rows = torch.randint(0, 2, (count,), generator=generator)
        for image, row in zip(images, rows.tolist()):
            image[0, row] = 220
            image[2, 4 + row] = 220
        return images

    detector = OODDetector(model, "orientation", k=2, binarize="none").fit(lit(200))
    images = lit(50)
    v = {name: value.numpy().astype(np.float64) for name, value in detector.values(detector.prepare(images)).items()}
    differences, _ = detector._orientation_inputs(v)
    expected = (images.double() - images.flip(2).double()).reshape(50, -1).numpy() / 255
    np.testing.assert_allclose(differences, expected, atol=1e-12)
    assert detector.predict(images.flip(2)).mean() >= 0.9 and detector.predict(images).mean() <= 0.2
