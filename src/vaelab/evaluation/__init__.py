"""Estimators that need no gradients, through the model interface only: every model, every estimator.

- `iwae`: importance-weighted bounds L_k (k = 1 is the ELBO) in nats per image;
- `laplace`: Laplace evidence at the posterior mode and Laplace-proposal importance sampling;
- `units`: active units, and the one-sample -ELBO reported after each training epoch;
- `common`: the Estimate they return, the streaming log-mean-exp, seeded noise.
docs/evaluation.md derives each estimator.
"""

from vaelab.evaluation.common import (
    DEFAULT_MAX_BYTES,
    NOISE_BLOCK,
    Estimate,
    PrefixLogMeanExp,
    iwae_from_log_weights,
    iwae_noise,
)
from vaelab.evaluation.iwae import IWAEResult, importance_weighted_bounds, importance_weighted_evaluation
from vaelab.evaluation.laplace import (
    LaplaceEvidence,
    Mode,
    laplace_evidence,
    laplace_importance_sampling,
    laplace_proposal,
    model_log_joint,
    newton_mode,
)
from vaelab.evaluation.units import active_units, negative_elbo

__all__ = [
    "DEFAULT_MAX_BYTES",
    "NOISE_BLOCK",
    "Estimate",
    "IWAEResult",
    "LaplaceEvidence",
    "Mode",
    "PrefixLogMeanExp",
    "active_units",
    "importance_weighted_bounds",
    "importance_weighted_evaluation",
    "iwae_from_log_weights",
    "iwae_noise",
    "laplace_evidence",
    "laplace_importance_sampling",
    "laplace_proposal",
    "model_log_joint",
    "negative_elbo",
    "newton_mode",
]
