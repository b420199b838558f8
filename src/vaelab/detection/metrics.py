"""Detection metrics from scores (higher = more anomalous) and labels (True = out-of-distribution, the positive class).

Plain NumPy, exact with ties: AUROC is the Mann-Whitney probability P(s_out > s_in) + P(s_out = s_in)/2;
the ROC curve and the precision-recall curve step at each distinct score, as scikit-learn's do.
"""

from __future__ import annotations

import numpy as np

from vaelab.errors import VaelabError


def _checked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise VaelabError(f"{scores.size} scores for {labels.size} labels; pass one label per score")
    if not np.isfinite(scores).all():
        raise VaelabError("the scores contain NaN or infinity; check the model's statistics on these images")
    if labels.all() or not labels.any():
        raise VaelabError("the labels need both classes (in- and out-of-distribution images)")
    return scores, labels


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), each (T + 1,): flag score >= threshold, thresholds the distinct scores descending
    after +inf (fpr = tpr = 0 first, 1 last)."""
    scores, labels = _checked(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(labels)[last_of_tie]
    false_positives = (last_of_tie + 1) - true_positives
    tpr = np.r_[0.0, true_positives / labels.sum()]
    fpr = np.r_[0.0, false_positives / (~labels).sum()]
    return fpr, tpr, np.r_[np.inf, scores[last_of_tie]]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(s_out > s_in) + P(s_out = s_in) / 2, from mid-ranks (Mann-Whitney U)."""
    scores, labels = _checked(scores, labels)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size)
    # Mid-ranks: each tie group gets the mean of the ranks it spans (1-based).
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    stops = np.r_[starts[1:], scores.size]
    ranks[order] = np.repeat((starts + stops + 1) / 2, stops - starts)
    positives, negatives = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision Σ_n (R_n - R_{n-1}) P_n over the distinct thresholds (out-of-distribution = positive)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    labels = np.asarray(labels).astype(bool)
    true_positives = tpr[1:] * labels.sum()
    flagged = true_positives + fpr[1:] * (~labels).sum()
    precision = true_positives / flagged
    return float(np.sum(np.diff(tpr) * precision))


def fpr_at_tpr(scores: np.ndarray, labels: np.ndarray, tpr_level: float = 0.95) -> float:
    """The smallest false-positive rate among thresholds that flag at least `tpr_level` of the positives."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(fpr[np.argmax(tpr >= tpr_level - 1e-12)])


def detection_metrics(scores_in: np.ndarray, scores_out: np.ndarray) -> dict[str, float]:
    """{"auroc", "auprc", "fpr95"} with the out-of-distribution images as positives."""
    scores = np.r_[np.asarray(scores_in, np.float64).ravel(), np.asarray(scores_out, np.float64).ravel()]
    labels = np.r_[np.zeros(np.size(scores_in), bool), np.ones(np.size(scores_out), bool)]
    return {"auroc": auroc(scores, labels), "auprc": auprc(scores, labels), "fpr95": fpr_at_tpr(scores, labels)}
