"""Out-of-distribution statistics as pure functions of per-image values: higher = more anomalous.

Every value comes in as a NumPy array (N,) in nats unless named in bits; every statistic returns (N,) float64.
The per-image values themselves (bounds, refits, the top-layer bound) come from a model in
vaelab.detection.values; nothing here knows of models.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from vaelab.errors import VaelabError
from vaelab.optim import lbfgs_minimum

LOG2 = math.log(2.0)


def negative_log_likelihood(bound: np.ndarray) -> np.ndarray:
    """-L_k (N,) nats: the raw likelihood score (Bishop 1994), known to fail where simple images are likelier."""
    return -np.asarray(bound, dtype=np.float64)


def complexity_bits(images: np.ndarray) -> np.ndarray:
    """L(x) (N,) bits: 8 x the length of zlib's level-9 compression of each uint8 image's bytes (C, H, W order)."""
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8:
        raise VaelabError(f"complexity is measured on uint8 images, got {images.dtype}; pass the images as stored")
    return np.array([8.0 * len(zlib.compress(image.tobytes(), 9)) for image in images], dtype=np.float64)


def complexity_corrected(bound: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """S(x) = -log2 p(x) - L(x) (N,) bits (Serrà et al. 2020, eq. 2): the likelihood beyond what a generic
    compressor already explains. bound: L_k in nats, bits: complexity_bits."""
    return -np.asarray(bound, dtype=np.float64) / LOG2 - np.asarray(bits, dtype=np.float64)


def nats_per_code_bit(bound: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """-L_k / L(x) (N,) nats per bit: the negative log-likelihood per bit of a generic compressor's code for the
    image. Serrà et al. subtract the code length; the ratio is the scale-free form, and in DoSE's Gaussian it
    separates images whose likelihood and complexity are each typical but not together (thin strokes under a
    model of filled shapes: Fashion-MNIST -> MNIST)."""
    return -np.asarray(bound, dtype=np.float64) / np.asarray(bits, dtype=np.float64)


def likelihood_ratio(bound: np.ndarray, bound_above_first: np.ndarray) -> np.ndarray:
    """LLR^{>1} = L - L^{>1} (N,) nats (Havtorn et al. 2021, eq. 9): how much the first stochastic layer's posterior
    adds to the bound over drawing z1 from its conditional prior p(z1|z2); large where only low-level detail
    explains the image."""
    return np.asarray(bound, dtype=np.float64) - np.asarray(bound_above_first, dtype=np.float64)


def likelihood_regret(elbo_refit: np.ndarray, elbo: np.ndarray) -> np.ndarray:
    """Regret = ELBO with q refitted to the image - ELBO with the amortized q (N,) nats (Xiao et al. 2020):
    how much better the image could be explained than the encoder, fitted to the training data, explains it."""
    return np.asarray(elbo_refit, dtype=np.float64) - np.asarray(elbo, dtype=np.float64)


def upside_down_gap(bound: np.ndarray, bound_upside_down: np.ndarray) -> np.ndarray:
    """L_k(x upside down) - L_k(x) (N,) nats: how much likelier the model finds the image turned upside down.

    Under a uniform prior over the two orientations, log P(upright | x) = -softplus(gap): the model serves as its
    own orientation classifier (the transformation-prediction tests of Golan & El-Yaniv 2018 and Hendrycks et al.
    2019, with Bayes' rule in place of a classifier). Upright in-distribution images have gaps well below 0; an
    image likelier upside down looks like in-distribution data turned over. Pass the bounds of one draw of the
    image and of that same draw flipped (common random numbers), so the difference is not drowned in noise."""
    return np.asarray(bound_upside_down, dtype=np.float64) - np.asarray(bound, dtype=np.float64)


def conformal_p_values(reference: np.ndarray, scores: np.ndarray, *, held_in: bool = False) -> np.ndarray:
    """(1 + #{reference >= s}) / (n + 1) (N,) for each score s: uniform on (0, 1] for images exchangeable with the
    n reference images (their scores, sorted ascending). held_in: the scores are the reference images' own, each
    counted once in its own #{reference >= s}, so that count is taken one lower."""
    reference = np.asarray(reference, dtype=np.float64)
    at_least = reference.size - np.searchsorted(reference, np.asarray(scores, dtype=np.float64), side="left")
    return (1.0 + at_least - int(held_in)) / (reference.size + 1.0)


def fisher_combination(p_values: list[np.ndarray]) -> np.ndarray:
    """-2 Σ_j log p_j (N,) (Fisher 1925): the joint evidence of independent tests' p-values (N,) each; higher = more
    anomalous. One test that rejects strongly, or several that reject mildly, both raise it."""
    return -2.0 * np.sum([np.log(np.asarray(p, dtype=np.float64)) for p in p_values], axis=0)


def typicality_distance(nll: np.ndarray, entropy: float) -> np.ndarray:
    """|-log p(x) - Ĥ| (N,) nats: the typicality test of Nalisnick et al. (2019) for batches of one image,
    Ĥ the mean -log p over in-distribution images."""
    return np.abs(np.asarray(nll, dtype=np.float64) - entropy)


def typicality_test(
    nll_fit: np.ndarray, nll: np.ndarray, batch_size: int, alpha: float = 0.01, *, bootstrap: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Nalisnick et al. (2019), algorithm 1, on consecutive batches of `batch_size` images of nll (N,) nats.

    Ĥ = mean(nll_fit); ε = the (1 - alpha) quantile of |mean(B) - Ĥ| over `bootstrap` batches B drawn with
    replacement from nll_fit. Returns (distances (N // batch_size,), flags): a batch is flagged when its
    |mean - Ĥ| exceeds ε.
    """
    nll_fit, nll = np.asarray(nll_fit, np.float64), np.asarray(nll, np.float64)
    if batch_size < 1 or nll.size < batch_size:
        raise VaelabError(f"batch_size {batch_size} needs 1 <= batch_size <= {nll.size} images")
    entropy = nll_fit.mean()
    draws = np.random.default_rng(seed).choice(nll_fit, size=(bootstrap, batch_size), replace=True)
    epsilon = np.quantile(np.abs(draws.mean(axis=1) - entropy), 1 - alpha)
    batches = nll[: nll.size // batch_size * batch_size].reshape(-1, batch_size)
    distances = np.abs(batches.mean(axis=1) - entropy)
    return distances, distances > epsilon


class DensityOfStates:
    """DoSE (Morningstar et al. 2021): -log p̂(t(x)) of F per-image summary statistics t (N, F), p̂ a Gaussian
    with full covariance fitted on in-distribution images. The paper's per-statistic kernel densities miss
    that the statistics move together (the likelihood with the image's complexity); a joint Gaussian sees it."""

    def __init__(self, mean: np.ndarray, covariance: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)  # (F,)
        self.covariance = np.asarray(covariance, dtype=np.float64)  # (F, F)
        scale = np.sqrt(np.diag(self.covariance))
        # Standardised first: the statistics differ in scale by orders of magnitude (bits vs nats of a KL).
        correlation = self.covariance / np.outer(scale, scale) + 1e-9 * np.eye(self.mean.size)
        self._precision = np.linalg.inv(correlation) / np.outer(scale, scale)
        _, log_det = np.linalg.slogdet(correlation)
        self._log_norm = 0.5 * (log_det + 2 * np.log(scale).sum() + self.mean.size * math.log(2 * math.pi))

    @classmethod
    def fit(cls, features: np.ndarray) -> DensityOfStates:
        """features (N, F) of in-distribution images, N > F."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] <= features.shape[1]:
            raise VaelabError(f"DoSE needs more images than statistics (N, F), got shape {features.shape}")
        covariance = np.atleast_2d(np.cov(features, rowvar=False))
        covariance += np.diag(np.maximum(1e-12, 1e-9 * np.diag(covariance)))  # a constant statistic stays finite
        return cls(features.mean(axis=0), covariance)

    def score(self, features: np.ndarray) -> np.ndarray:
        """features (N, F) -> -log N(t; mean, covariance) (N,) nats."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        return 0.5 * np.einsum("ni,ij,nj->n", centred, self._precision, centred) + self._log_norm

    def residual(self, features: np.ndarray, target: int, given: tuple[int, ...]) -> np.ndarray:
        """(t_target - E[t_target | t_given]) / sd[t_target | t_given] (N,) under the fitted Gaussian: how far one
        statistic lies above what the others predict, in standard deviations (signed, so a one-sided test).

        With target -L_k and given the images' code lengths, this is the complexity correction of Serrà et al.
        (2020) with the slopes fitted in-distribution instead of fixed at one bit per bit."""
        features = np.asarray(features, dtype=np.float64)
        given_ = list(given)
        cov = self.covariance
        slopes = np.linalg.solve(cov[np.ix_(given_, given_)], cov[given_, target])  # (G,)
        scale = math.sqrt(max(cov[target, target] - cov[target, given_] @ slopes, 1e-300))
        predicted = self.mean[target] + (features[:, given_] - self.mean[given_]) @ slopes
        return (features[:, target] - predicted) / scale


class OrientationClassifier:
    """logit P(upright | x) = w · (x - x↕) + a · gap(x): a logistic regression that tells an image from the same
    image upside down (x↕), fitted on in-distribution images alone (Golan & El-Yaniv 2018's self-supervised
    transformation classifier, linear and with the model's upside-down gap as one more feature).

    Antisymmetric by construction: turning x over turns the sign of both features, so logit(x↕) = -logit(x), an
    image equal to its own flip gets P = 1/2, and no intercept is needed. For the same reason the upside-down copy
    of each fit image (label 0, features negated) adds the same loss term as the image itself (label 1): fitting on
    the upright images alone is logistic regression on the balanced pair set."""

    def __init__(self, weights: np.ndarray, gap_weight: float, gap_scale: float = float("nan")) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)  # (P,) on the pixel differences
        self.gap_weight = float(gap_weight)
        self.gap_scale = float(gap_scale)  # the nats the ridge measured the gap in when it was fitted

    @classmethod
    def fit(
        cls, differences: np.ndarray, gaps: np.ndarray, penalty: float = 1e-4, gap_scale: float = 100.0
    ) -> OrientationClassifier:
        """differences (N, P) = x - x↕ of in-distribution images, gaps (N,) = upside_down_gap in nats: the minimum
        of mean softplus(-logit) + penalty / 2 (|w|² + (a gap_scale)²), so the ridge sees the gap in units of
        gap_scale nats."""
        features = np.concatenate(
            [np.asarray(differences, np.float64), np.asarray(gaps, np.float64)[:, None] / gap_scale], axis=1
        )
        if features.shape[0] < 2:
            raise VaelabError(f"the orientation classifier fits on at least 2 images, got {features.shape[0]}")
        w = _penalized_logistic(features, penalty)
        return cls(w[:-1], w[-1] / gap_scale, gap_scale)

    @classmethod
    def fit_selected(
        cls,
        differences: np.ndarray,
        gaps: np.ndarray,
        penalty: float = 1e-4,
        gap_scales: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0),
    ) -> OrientationClassifier:
        """`fit` with the gap_scale that orients held-out images best: two-fold cross-validation over
        gap_scales (alternate images), each fold's classifier judged by the AUROC of its held-out images against
        the same images upside down (pair_auroc). Returns the classifier fitted on all images at that scale.
        The weight the gap deserves beside the pixels differs by data (chosen on the bench's models: 30 nats on
        MNIST, 10 on Fashion-MNIST)."""
        differences, gaps = np.asarray(differences, np.float64), np.asarray(gaps, np.float64)
        folds = (np.arange(gaps.size) % 2 == 0, np.arange(gaps.size) % 2 == 1)
        if min(fold.sum() for fold in folds) < 2:
            return cls.fit(differences, gaps, penalty, gap_scales[0])
        measured = []
        for scale in gap_scales:
            held_out = []
            for train, test in (folds, folds[::-1]):
                fitted = cls.fit(differences[train], gaps[train], penalty, scale)
                held_out.append(pair_auroc(fitted.logit(differences[test], gaps[test])))
            measured.append(np.mean(held_out))
        return cls.fit(differences, gaps, penalty, gap_scales[int(np.argmax(measured))])

    def logit(self, differences: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        """log P(upright | x) / P(upside down | x) (N,) for differences (N, P) = x - x↕ and gaps (N,)."""
        return np.asarray(differences, np.float64) @ self.weights + self.gap_weight * np.asarray(gaps, np.float64)


def pair_auroc(logits: np.ndarray) -> float:
    """AUROC of upright images against the same images upside down under an antisymmetric classifier, from the
    upright images' logits s (N,): the fraction of pairs (i, j) with s_i > -s_j, ties counted half."""
    s = np.sort(np.asarray(logits, np.float64))
    below = np.searchsorted(s, -s, side="left")  # #{j: s_j < -s_i}
    ties = np.searchsorted(s, -s, side="right") - below
    return float((s.size - below - ties + 0.5 * ties).sum() / s.size**2)


def _penalized_logistic(features: np.ndarray, penalty: float) -> np.ndarray:
    """argmin_w mean softplus(-features @ w) + penalty / 2 |w|² (F,): a strictly convex problem, solved by L-BFGS in
    float64 (memory and time linear in F, so colour images of any size fit; Newton's F x F Hessian would not)."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))

    def loss(w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(-(x @ w)).mean() + 0.5 * penalty * (w * w).sum()

    start = torch.zeros(x.shape[1], dtype=torch.float64)
    return lbfgs_minimum(loss, start, max_iter=2000, tolerance_grad=1e-10, tolerance_change=1e-14).numpy()
