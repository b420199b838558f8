"""OODDetector: fitted on in-distribution images, it scores new ones and flags those beyond its threshold.

The PyOD shape (fit, score, predict) with alibi-detect's saved threshold: `fit(x)` keeps the statistic's values
on the fit images, the threshold is their (1 - fpr) quantile, so about a fraction `fpr` of in-distribution
images is flagged; `p_values(x)` = (1 + #{fit scores >= s}) / (n + 1), a conformal p-value. Statistics with a
density fitted on in-distribution data (DoSE) fit it on one half of the images and calibrate on the other.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.data.transforms import binarize, prepare
from vaelab.detection import statistics as stats
from vaelab.detection import values
from vaelab.errors import VaelabError
from vaelab.evaluation.common import index_bernoulli
from vaelab.integrity import check_schema, sha256_tensors
from vaelab.io import atomic_write
from vaelab.models.base import LatentVariableModel
from vaelab.models.hierarchical import TwoLayerVAE

FORMAT = "vaelab-ood-detector"
VERSION = 4  # 2: values averaged over binarization draws, DoSE with the stored image's code length; 3: combined,
# DoSE with -L_k per code bit; 4: the orientation classifier, combined's second question
BINARIZE_STREAM = 6  # the dynamic binarization draws' noise stream (vaelab.evaluation.common.Noise uses 1-5)
# name -> what it measures; every one is "higher = more anomalous".
STATISTICS = {
    "nll": "-L_k, the raw negative log-likelihood bound (nats)",
    "complexity": "-log2 p(x) - zlib bits of the image (Serrà et al. 2020)",
    "llr": "L_k - L_k^{>1}, the two-layer likelihood ratio (Havtorn et al. 2021)",
    "regret": "ELBO after a per-image refit of q - ELBO (Xiao et al. 2020)",
    "typicality": "|-L_k - mean in-distribution -L_k| (Nalisnick et al. 2019, batches of one)",
    "dose": "-log N of (-L_k, -E_q log p(x|z), KL, zlib bits of the draw and of the stored image, -L_k per bit of "
    "the latter) fitted in-distribution (after Morningstar et al. 2021)",
    "residual": "-L_k above what the image's zlib bits predict, in standard deviations of a Gaussian fitted "
    "in-distribution (Serrà et al. 2020 with fitted slopes)",
    "upside-down": "L_k of the image upside down - L_k of the image (the model as its own orientation classifier)",
    "orientation": "-logit P(upright | x) of a logistic regression on x - x upside down and the upside-down gap, "
    "fitted on in-distribution images and their flips (after Golan & El-Yaniv 2018)",
    "combined": "-log of the smaller of two conformal p-values, weighted 3:1: of Fisher's combination of dose's and "
    "residual's (are the image's statistics typical?) and of orientation's (is it the right way up?)",
}
DEFAULT_STATISTIC = "combined"
COMPONENTS = ("dose", "residual", "orientation")  # what "combined" is made of
DENSITY_STATISTICS = ("dose", "residual", "combined")  # a Gaussian over the DoSE features fitted in-distribution
NEEDS_UPSIDE_DOWN = ("upside-down", "orientation", "combined")
ORIENTED_STATISTICS = ("orientation", "combined")  # an orientation classifier fitted in-distribution
# Fitted on one half of the fit images, calibrated on the other (see fit_values).
FITTED_STATISTICS = ("typicality", *DENSITY_STATISTICS, "orientation")
# combined's weighted Bonferroni: p_orientation counts three times, so the typical-statistics question has three
# quarters of the false-positive budget and orientation one quarter (docs/detection.md, "Combining").
ORIENTATION_WEIGHT = 3.0
# The orientation classifier's ridge on its pixel weights (the gap's scale under it is cross-validated): held-out
# orientation AUROC on the calibration half moved by at most 0.0015 over 1e-5 .. 1e-3 on MNIST and Fashion-MNIST.
ORIENTATION_PENALTY = 1e-4
CODE_LENGTHS = (3, 4)  # the DoSE features' columns of zlib bits: of the binarized draw and of the stored image
DOSE_FEATURES = 6  # -L_k, -E_q log p(x|z), KL, the two code lengths, -L_k per code bit (_features)
SCHEMA = {
    "format": str,
    "version": int,
    "statistic": str,
    "fpr": float,
    "k": int,
    "seed": int,
    "binarize": str,
    "regret_steps": int,
    "draws": int,
    "model_sha256": str,
    "fit_scores": list,
    "threshold": float,
    "entropy": float,
    "density": (dict, type(None)),
    "orientation": (dict, type(None)),
    "references": dict,
}


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    array = np.asarray(x)
    if array.dtype not in (np.uint8, np.float32, np.float64):
        raise VaelabError(f"expected uint8 images or float pixels in [0, 1], got {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array))


class OODDetector:
    """Scores images by `statistic` (a name in STATISTICS) under `model`; higher = more anomalous.

    fpr: the in-distribution false-positive rate the threshold is set for; k: importance samples per bound;
    binarize: how the model's training data were binarized (TrainConfig.binarize; uint8 images are prepared so,
    with one draw seeded by `seed` where dynamic); regret_steps: Adam steps of the per-image refit ("regret").
    """

    def __init__(
        self,
        model: LatentVariableModel,
        statistic: str = DEFAULT_STATISTIC,
        *,
        fpr: float = 0.05,
        k: int = 16,
        seed: int = 0,
        binarize: str = "none",
        regret_steps: int = 20,
        draws: int = 4,
    ) -> None:
        if statistic not in STATISTICS:
            raise VaelabError(f"unknown statistic {statistic!r}; choose one of {', '.join(STATISTICS)}")
        if statistic == "llr" and not isinstance(model, TwoLayerVAE):
            raise VaelabError(
                "statistic 'llr' needs a model with two stochastic layers; train one with --preset burda-two-layer "
                "or choose another statistic"
            )
        if statistic in NEEDS_UPSIDE_DOWN and model.spec.shape is None:
            raise VaelabError(
                f"statistic {statistic!r} turns images upside down, and this model's input of {model.spec.input_dim} "
                "values is no image (give the model an image_shape); choose dose instead"
            )
        if not 0 < fpr < 1:
            raise VaelabError(f"fpr must lie in (0, 1), got {fpr}")
        if k < 1 or regret_steps < 1 or draws < 1:
            raise VaelabError(f"k, regret_steps and draws must be >= 1, got {k}, {regret_steps}, {draws}")
        if binarize not in ("none", "dynamic", "threshold"):
            raise VaelabError(f"unknown binarization {binarize!r}; choose none, dynamic or threshold")
        self.model = model.eval()
        self.statistic, self.fpr, self.k, self.seed = statistic, float(fpr), int(k), int(seed)
        self.binarize, self.regret_steps = binarize, int(regret_steps)
        self.draws = int(draws) if binarize == "dynamic" else 1  # a fixed binarization has one draw
        self.fit_scores: np.ndarray | None = None
        self.threshold = float("nan")
        self.entropy = float("nan")  # mean -L_k on the fit images (typicality)
        self.density: stats.DensityOfStates | None = None
        self.orientation: stats.OrientationClassifier | None = None
        self.references: dict[str, np.ndarray] = {}  # "combined": each component's sorted calibration scores
        self.seconds_per_image = float("nan")  # the last score() call's time per image

    # --- inputs and per-image values --------------------------------------------------------------------------
    def prepare(self, images: Any) -> torch.Tensor:
        """uint8 images (N, [C,] H, W) or float pixels (N, P) -> grey pixels x (N, P) in [0, 1], the model's shape
        checked; `values` binarizes them as the model was trained."""
        images = _as_tensor(images)
        if images.is_floating_point():
            images = images.reshape(images.shape[0], -1) if images.dim() > 2 else images
        return prepare(images, self.model.spec, "none")

    def values(self, grey: torch.Tensor, first_image: int = 0) -> dict[str, torch.Tensor]:
        """What the statistic needs of each image, grey pixels (N, P) in [0, 1] (`prepare`), the images
        first_image .. of a set: float64 (N,) per name, and for the orientation classifier "pixels", the grey
        image in 8 bits (N, P) uint8. A dynamically binarized model's values are averaged over
        `draws` Bernoulli draws of each image (one draw's likelihood and code length are noisy); every draw is
        seeded by image index, so these are the values `vaelab.evaluation.runner` shards and merges."""
        stored = (grey * 255).round().to(torch.uint8)  # the image in 8 bits, as stored
        grey_bits = stats.complexity_bits(stored.numpy())
        per_draw = [self._draw_values(self._binarized(grey, first_image, r), first_image) for r in range(self.draws)]
        averaged = {name: np.mean([draw[name] for draw in per_draw], axis=0) for name in per_draw[0]}
        if self.statistic in DENSITY_STATISTICS:
            averaged["bits_grey"] = grey_bits
        result = {name: torch.from_numpy(np.asarray(value, dtype=np.float64)) for name, value in averaged.items()}
        if self.statistic in ORIENTED_STATISTICS:  # the classifier's pixels, 8 bits each (N, P): small in shards
            result["pixels"] = stored
        return result

    def _binarized(self, grey: torch.Tensor, first_image: int, draw: int) -> torch.Tensor:
        if self.binarize == "dynamic":
            return index_bernoulli(grey, self.seed, BINARIZE_STREAM, first_image, draw)
        return binarize(grey, self.binarize)

    def _draw_values(self, x: torch.Tensor, first_image: int) -> dict[str, np.ndarray]:
        """The statistic's values of one binarization x (N, P) of the images."""
        needed: dict[str, np.ndarray] = {}
        if self.statistic != "regret":
            needed.update(values.bounds(self.model, x, self.k, self.seed, first_image=first_image))
        if self.statistic in ("complexity", *DENSITY_STATISTICS):
            needed["bits"] = stats.complexity_bits((x * 255).round().to(torch.uint8).numpy())
        if self.statistic in NEEDS_UPSIDE_DOWN:  # the same draw turned over: the gap's noise mostly cancels
            upside_down = x.reshape(x.shape[0], *self.model.spec.shape).flip(-2).reshape(x.shape)
            needed["L_k_upside_down"] = values.bounds(
                self.model, upside_down, self.k, self.seed, first_image=first_image
            )["L_k"]
        if self.statistic == "llr":
            needed["L_above"] = values.bound_above_first_layer(
                self.model, x, self.k, self.seed, first_image=first_image
            )
        if self.statistic == "regret":
            needed["elbo"], needed["elbo_refit"] = values.refit_elbo(
                self.model, x, steps=self.regret_steps, seed=self.seed, first_image=first_image
            )
        return needed

    def _features(self, v: dict[str, np.ndarray]) -> np.ndarray:
        """DoSE's summaries (N, 6): -L_k, -E_q log p(x|z), KL, the CODE_LENGTHS columns, then -L_k per bit of the
        stored image's code (a ratio no Gaussian over the others can express)."""
        nll_per_bit = stats.nats_per_code_bit(v["L_k"], v["bits_grey"])
        return np.stack((-v["L_k"], -v["log_likelihood"], v["kl"], v["bits"], v["bits_grey"], nll_per_bit), axis=1)

    def _orientation_inputs(self, v: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The orientation classifier's features: x - x upside down (N, P) in [-1, 1], and the upside-down gap."""
        pixels = v["pixels"].reshape(-1, *self.model.spec.shape)  # type: ignore[misc]
        differences = (pixels - pixels[..., ::-1, :]).reshape(pixels.shape[0], -1) / 255.0
        return differences, stats.upside_down_gap(v["L_k"], v["L_k_upside_down"])

    def _statistic(self, v: dict[str, np.ndarray], name: str | None = None, held_in: bool = False) -> np.ndarray:
        """The statistic `name` (default: the detector's) of values v; held_in: v are the calibration images'."""
        name = name or self.statistic
        if name == "combined":
            orientation = np.minimum(1.0, ORIENTATION_WEIGHT * self._p(v, "orientation", held_in))
            return -np.log(np.minimum(self._p(v, "typical", held_in), orientation))
        if name == "orientation":
            return -self.orientation.logit(*self._orientation_inputs(v))  # type: ignore[union-attr]
        if name == "typical":  # Fisher's combination of dose's and residual's p-values, a part of "combined"
            return stats.fisher_combination([self._p(v, "dose", held_in), self._p(v, "residual", held_in)])
        if name == "upside-down":
            return stats.upside_down_gap(v["L_k"], v["L_k_upside_down"])
        if name == "residual":  # -L_k given the draw's and the stored image's code lengths
            return self.density.residual(self._features(v), target=0, given=CODE_LENGTHS)  # type: ignore[union-attr]
        if name == "nll":
            return stats.negative_log_likelihood(v["L_k"])
        if name == "complexity":
            return stats.complexity_corrected(v["L_k"], v["bits"])
        if name == "llr":
            return stats.likelihood_ratio(v["L_k"], v["L_above"])
        if name == "regret":
            return stats.likelihood_regret(v["elbo_refit"], v["elbo"])
        if name == "typicality":
            return stats.typicality_distance(stats.negative_log_likelihood(v["L_k"]), self.entropy)
        return self.density.score(self._features(v))  # type: ignore[union-attr]  # dose

    def _p(self, v: dict[str, np.ndarray], part: str, held_in: bool) -> np.ndarray:
        """Conformal p-values of the statistic `part` against the calibration images' (self.references)."""
        return stats.conformal_p_values(self.references[part], self._statistic(v, part, held_in), held_in=held_in)

    # --- the PyOD shape ---------------------------------------------------------------------------------------
    def fit(self, images: Any) -> OODDetector:
        """Fit on in-distribution images: keep their scores and the threshold at the (1 - fpr) quantile."""
        return self.fit_values(self.values(self.prepare(images)))

    def fit_values(self, per_image: dict[str, Any]) -> OODDetector:
        """`fit` from the fit images' `values` (computed in one pass or merged from shards)."""
        v = {name: np.asarray(value, dtype=np.float64) for name, value in per_image.items()}
        count = next(iter(v.values())).shape[0]
        if self.statistic in FITTED_STATISTICS:
            # DoSE's Gaussian over its 6 features needs more images than features in its half
            least = 2 * (DOSE_FEATURES + 1) if self.statistic in DENSITY_STATISTICS else 4
            if count < least:
                raise VaelabError(
                    f"statistic {self.statistic!r} fits on at least {least} images (half fit it, half calibrate "
                    f"it), got {count}; fit on more images"
                )
            # A density (or a mean) fitted on one half, the threshold calibrated on the other: scores of the images
            # a density was fitted on would be too low.
            order = np.random.default_rng(self.seed).permutation(count)
            fit_half, calibrate = np.sort(order[: count // 2]), np.sort(order[count // 2 :])
            self.entropy = float(-v["L_k"][fit_half].mean())
            if self.statistic in DENSITY_STATISTICS:
                self.density = stats.DensityOfStates.fit(self._features(v)[fit_half])
            if self.statistic in ORIENTED_STATISTICS:
                differences, gaps = self._orientation_inputs({name: v[name][fit_half] for name in v})
                self.orientation = stats.OrientationClassifier.fit_selected(differences, gaps, ORIENTATION_PENALTY)
            v = {name: value[calibrate] for name, value in v.items()}
        if self.statistic == "combined":  # each part's p-values are taken against the calibration images'
            self.references = {part: np.sort(self._statistic(v, part)) for part in COMPONENTS}
            self.references["typical"] = np.sort(self._statistic(v, "typical", held_in=True))
        self.fit_scores = np.sort(self._statistic(v, held_in=True))
        self.threshold = float(np.quantile(self.fit_scores, 1 - self.fpr))
        return self

    def score(self, images: Any) -> np.ndarray:
        """(N,) float64 scores in input order; higher = more anomalous."""
        self._require_fit()
        started = time.perf_counter()
        x = self.prepare(images)
        scores = self.score_values(self.values(x))
        self.seconds_per_image = (time.perf_counter() - started) / x.shape[0]
        return scores

    def score_values(self, per_image: dict[str, Any]) -> np.ndarray:
        """`score` from the images' `values`."""
        self._require_fit()
        return self._statistic({name: np.asarray(value, dtype=np.float64) for name, value in per_image.items()})

    def part_p_values(self, per_image: dict[str, Any]) -> dict[str, np.ndarray]:
        """For 'combined', which question an image fails: "p_typical" and "p_orientation" (N,), each part's
        conformal p-value from the images' `values` (the score is -log min(p_typical, ORIENTATION_WEIGHT
        p_orientation));
        {} for the other statistics."""
        self._require_fit()
        if self.statistic != "combined":
            return {}
        v = {name: np.asarray(value, dtype=np.float64) for name, value in per_image.items()}
        return {"p_typical": self._p(v, "typical", False), "p_orientation": self._p(v, "orientation", False)}

    def p_values_of(self, scores: np.ndarray) -> np.ndarray:
        """(N,) conformal p-values (1 + #{fit scores >= s}) / (n + 1) of scores: uniform on in-distribution images."""
        self._require_fit()
        return stats.conformal_p_values(self.fit_scores, scores)  # type: ignore[arg-type]

    def p_values(self, images: Any) -> np.ndarray:
        """(N,) conformal p-values (1 + #{fit scores >= s}) / (n + 1): uniform on in-distribution images."""
        return self.p_values_of(self.score(images))

    def predict(self, images: Any) -> np.ndarray:
        """(N,) bool: True where the score exceeds the threshold (out-of-distribution)."""
        self._require_fit()
        return self.score(images) > self.threshold

    def _require_fit(self) -> None:
        if self.fit_scores is None:
            raise VaelabError("the detector is not fitted; call fit(in_distribution_images) or OODDetector.load first")

    # --- storage ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted detector atomically as JSON, tied to the model's weights (their SHA-256)."""
        self._require_fit()
        state = {
            "format": FORMAT,
            "version": VERSION,
            "statistic": self.statistic,
            "fpr": self.fpr,
            "k": self.k,
            "seed": self.seed,
            "binarize": self.binarize,
            "regret_steps": self.regret_steps,
            "draws": self.draws,
            "model_sha256": sha256_tensors(self.model.state_dict()),
            "fit_scores": self.fit_scores.tolist(),  # type: ignore[union-attr]
            "threshold": self.threshold,
            "entropy": self.entropy,
            "density": None
            if self.density is None
            else {"mean": self.density.mean.tolist(), "covariance": self.density.covariance.tolist()},
            "orientation": None
            if self.orientation is None
            else {
                "weights": self.orientation.weights.tolist(),
                "gap_weight": self.orientation.gap_weight,
                "gap_scale": self.orientation.gap_scale,
            },
            "references": {part: scores.tolist() for part, scores in self.references.items()},
        }
        return atomic_write(path, json.dumps(state, allow_nan=True), what="detector")

    @classmethod
    def load(cls, path: str | Path, model: LatentVariableModel) -> OODDetector:
        """The detector saved at `path` for `model`; refused for a model with other weights."""
        fix = "fit a new detector for this model (OODDetector(model).fit(images)) and save it"
        try:
            state = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise VaelabError(f"cannot read detector {path}: {error}; {fix}") from None
        if isinstance(state, dict) and state.get("format") == FORMAT and state.get("version") != VERSION:
            # an older detector lacks newer fields: name its version, not the first missing field
            raise VaelabError(f"{path} is a vaelab detector of version {state.get('version')}, not {VERSION}; {fix}")
        check_schema(state, SCHEMA, where=f"detector {path}", fix=fix)
        if state["format"] != FORMAT:
            raise VaelabError(f"{path} is not a vaelab detector of version {VERSION}; {fix}")
        if state["model_sha256"] != sha256_tensors(model.state_dict()):
            raise VaelabError(f"detector {path} was fitted for another model (its weights differ); {fix}")
        detector = cls(
            model,
            state["statistic"],
            fpr=state["fpr"],
            k=state["k"],
            seed=state["seed"],
            binarize=state["binarize"],
            regret_steps=state["regret_steps"],
            draws=state["draws"],
        )
        detector.fit_scores = np.asarray(state["fit_scores"], dtype=np.float64)
        detector.threshold, detector.entropy = state["threshold"], state["entropy"]
        if state["density"] is not None:
            detector.density = stats.DensityOfStates(state["density"]["mean"], state["density"]["covariance"])
        if state["orientation"] is not None:
            saved = state["orientation"]
            detector.orientation = stats.OrientationClassifier(
                saved["weights"], saved["gap_weight"], saved["gap_scale"]
            )
        detector.references = {part: np.asarray(scores, np.float64) for part, scores in state["references"].items()}
        return detector
