"""The Ray Tune trainable: one trial on a Ray worker.

Workers need no database credentials and keep nothing but their node's copies of a stored dataset
and a stored model (:mod:`workers.datasets`, :mod:`workers.models`): they report per-epoch metrics
and, in a last report, the final metrics, the layer report, the latency observation for the
predictor's correction and the model bytes, which the runner persists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import tune

FINAL = "nas_final"
EPOCH_METRICS = "nas_epoch_metrics"


# Training is throughput work; where workers share CPUs with the API (one machine), requests
# should not wait behind it.
TRIAL_NICENESS = 10


def train_trial(config: dict[str, Any]) -> None:
    import ray

    os.setpriority(os.PRIO_PROCESS, 0, TRIAL_NICENESS)

    from nas import registry
    from nas.specs import JobSpec
    from workers.datasets import receive
    from workers.models import receive as receive_model

    receive(config.get("dataset"))  # before the spec's checks, which read a stored dataset's shape
    receive_model(config.get("model"))  # and a stored model's description
    spec = JobSpec.model_validate(config["spec"])
    # A worker node may keep its data elsewhere than the server that planned the trial.
    data_dir = Path(os.environ.get("NAS_DATA_DIR") or config["data_dir"])

    def report(epoch: int, metrics: dict[str, float]) -> None:
        tune.report({"epoch": epoch, EPOCH_METRICS: metrics, **metrics})

    strategy = registry.strategies.get(spec.strategy.name)
    outcome = strategy.run_trial(spec, config["arch"], data_dir, report, config.get("parent_model"))
    tune.report(
        {
            **outcome.metrics,
            FINAL: {
                "metrics": outcome.metrics,
                "layers": outcome.layers,
                "outputs": outcome.outputs,
                "latency_observation": outcome.latency_observation,
                "node_id": ray.get_runtime_context().get_node_id(),
            },
            "model": outcome.model_bytes,
        }
    )
