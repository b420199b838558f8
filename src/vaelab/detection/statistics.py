"""Out-of-distribution statistics as pure functions of per-image values: higher = more anomalous.

Every value comes in as a NumPy array (N,) in nats unless named in bits; every statistic returns (N,) float64.
The per-image values themselves (bounds, refits, the top-layer bound) come from a model in
vaelab.detection.values; nothing here knows of models.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from vaelab.errors import VaelabError

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


def likelihood_ratio(bound: np.ndarray, bound_above_first: np.ndarray) -> np.ndarray:
    """LLR^{>1} = L - L^{>1} (N,) nats (Havtorn et al. 2021, eq. 9): how much the first stochastic layer's posterior
    adds to the bound over drawing z1 from its conditional prior p(z1|z2); large where only low-level detail
    explains the image."""
    return np.asarray(bound, dtype=np.float64) - np.asarray(bound_above_first, dtype=np.float64)


def likelihood_regret(elbo_refit: np.ndarray, elbo: np.ndarray) -> np.ndarray:
    """Regret = ELBO with q refitted to the image - ELBO with the amortized q (N,) nats (Xiao et al. 2020):
    how much better the image could be explained than the encoder, fitted to the training data, explains it."""
    return np.asarray(elbo_refit, dtype=np.float64) - np.asarray(elbo, dtype=np.float64)


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
    """DoSE (Morningstar et al. 2021): -Σ_j log p̂_j(t_j(x)) over F per-image summary statistics t (N, F),
    each p̂_j a Gaussian kernel density estimate fitted on in-distribution images (Scott's bandwidth)."""

    def __init__(self, points: np.ndarray, bandwidths: np.ndarray) -> None:
        self.points = np.asarray(points, dtype=np.float64)  # (M, F) the fitted statistics
        self.bandwidths = np.asarray(bandwidths, dtype=np.float64)  # (F,)

    @classmethod
    def fit(cls, features: np.ndarray, max_points: int = 2000, seed: int = 0) -> DensityOfStates:
        """features (N, F) of in-distribution images; at most max_points of them (a seeded subset) are kept."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise VaelabError(f"DoSE needs at least 2 images' statistics (N, F), got shape {features.shape}")
        if features.shape[0] > max_points:
            keep = np.random.default_rng(seed).choice(features.shape[0], max_points, replace=False)
            features = features[np.sort(keep)]
        spread = np.maximum(features.std(axis=0, ddof=1), 1e-6 * np.maximum(1.0, np.abs(features).max(axis=0)))
        return cls(features, spread * features.shape[0] ** (-1 / 5))

    def score(self, features: np.ndarray) -> np.ndarray:
        """features (N, F) -> -Σ_j log p̂_j (N,) nats."""
        features = np.asarray(features, dtype=np.float64)
        total = np.zeros(features.shape[0])
        for j, h in enumerate(self.bandwidths):
            for start in range(0, features.shape[0], 1024):  # (1024, M) at a time
                u = (features[start : start + 1024, j, None] - self.points[None, :, j]) / h
                top = (-0.5 * u**2).max(axis=1, keepdims=True)
                log_density = top[:, 0] + np.log(np.exp(-0.5 * u**2 - top).mean(axis=1))
                total[start : start + 1024] -= log_density - math.log(h * math.sqrt(2 * math.pi))
        return total
