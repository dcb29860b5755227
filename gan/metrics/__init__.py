"""Evaluation metrics: one module per metric behind a registry (stylegan2-ada's layout).

- `registry`: `@register_metric`, the names with their protocols, metric-<name>.jsonl;
- `inputs`: `EvalConfig` (the evaluation's options) and `EvalInputs` (what metrics see);
- `sliced_wasserstein`, `inception`, `probe`, `copies`: the computations;
- `by_city`: SWD per city and the city classifier's test (registered on import, here).

Pure torch: no Prefect, no MLflow. docs/EVALUATION.md says what every number means.
"""

import gan.metrics.by_city  # noqa: F401  (registers the per-city metrics after the rest)
from gan.metrics.inputs import EvalConfig, EvalInputs
from gan.metrics.registry import append_result, compute_metric, metric_names, register_metric

__all__ = [
    "EvalConfig",
    "EvalInputs",
    "append_result",
    "compute_metric",
    "metric_names",
    "register_metric",
]
