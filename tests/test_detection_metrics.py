"""vaelab.detection.metrics against hand-computed values (ties included) and, where present, scikit-learn."""

import numpy as np
import pytest

from vaelab.detection.metrics import auprc, auroc, detection_metrics, fpr_at_tpr, roc_curve
from vaelab.errors import VaelabError

# Four in-distribution scores, four out: out > in in 14 of 16 pairs, one tie (0.5) -> AUROC 14.5 / 16.
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.8, 0.7, 0.95])
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)


def test_auroc_counts_pairs_and_halves_ties():
    pairs = [(o > i) + 0.5 * (o == i) for o in SCORES[LABELS] for i in SCORES[~LABELS]]
    assert auroc(SCORES, LABELS) == pytest.approx(np.mean(pairs)) == pytest.approx(14.5 / 16)


def test_perfect_and_reversed_separation():
    scores, labels = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0, 0, 1, 1])
    assert auroc(scores, labels) == 1.0 and auroc(-scores, labels) == 0.0
    assert auprc(scores, labels) == 1.0 and fpr_at_tpr(scores, labels) == 0.0


def test_roc_curve_steps_at_each_distinct_score():
    fpr, tpr, thresholds = roc_curve(SCORES, LABELS)
    # Descending: 0.95 (o), 0.9 (o), 0.8 (o + i tie), 0.7 (o), 0.4 (i), 0.35 (i), 0.1 (i).
    np.testing.assert_allclose(thresholds, [np.inf, 0.95, 0.9, 0.8, 0.7, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(tpr, [0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.25, 0.25, 0.5, 0.75, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(SCORES, LABELS))


def test_auprc_is_average_precision_and_fpr95_by_hand():
    # Recall steps of 1/4 at precision 1, 1, 3/4 (0.8: 3 of 4 flagged), 4/5.
    assert auprc(SCORES, LABELS) == pytest.approx(0.25 * (1 + 1 + 0.75 + 0.8))
    assert fpr_at_tpr(SCORES, LABELS) == 0.25  # all four positives first reached at 0.7, one negative above
    assert detection_metrics(SCORES[~LABELS], SCORES[LABELS])["auroc"] == pytest.approx(14.5 / 16)


def test_against_all_pairs_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 20, 300).astype(float), rng.random(300) < 0.3
    outside, inside = scores[labels][:, None], scores[~labels][None, :]
    assert auroc(scores, labels) == pytest.approx(np.mean((outside > inside) + 0.5 * (outside == inside)))
    fpr, tpr, _ = roc_curve(scores, labels)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, labels))


def test_one_class_or_nan_refused():
    with pytest.raises(VaelabError, match="both classes"):
        auroc(np.array([1.0, 2.0]), np.array([1, 1]))
    with pytest.raises(VaelabError, match="NaN"):
        auroc(np.array([1.0, np.nan]), np.array([0, 1]))
