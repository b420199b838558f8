"""Training: its state (to and from a checkpoint), the loop itself, and its guards.

- `state`: TrainState, the run's initial model and optimizer, the checkpoint dict;
- `loop`: `train`, one visible loop over epochs and batches;
- `guards`: input checks, stop signals, the finite-loss check;
- `metrics`: metrics.csv, one row per epoch.
"""

from vaelab.training.loop import TrainResult, train
from vaelab.training.metrics import METRICS_COLUMNS, METRICS_NAME, read_metrics, write_metrics
from vaelab.training.state import TrainState, initial_model

__all__ = [
    "METRICS_COLUMNS",
    "METRICS_NAME",
    "TrainResult",
    "TrainState",
    "initial_model",
    "read_metrics",
    "train",
    "write_metrics",
]
