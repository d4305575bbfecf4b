"""The Ray Tune trainable: one trial on a Ray worker.

Workers need no database credentials and keep nothing but their node's copies of a stored dataset
and a stored model (:mod:`workers.datasets`, :mod:`workers.models`): they report per-epoch metrics
and, in a last report, the final metrics, the layer report, the latency observation for the
predictor's correction and the model bytes, which the runner persists. Each report carries the
trial's log lines since the previous one; a failure carries the rest (:mod:`nas.trial_log`).
A trial trains on the GPU Ray gave its worker, if it gave one (:func:`allotted_device`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

if TYPE_CHECKING:
    import torch

FINAL = "nas_final"
EPOCH_METRICS = "nas_epoch_metrics"
LOG = "nas_log"  # the trial's log lines since its previous report (nas.trial_log)


log = logging.getLogger(__name__)

# Training is throughput work; where workers share CPUs with the API (one machine), requests
# should not wait behind it.
TRIAL_NICENESS = 10


def train_trial(config: dict[str, Any]) -> None:
    import ray

    os.setpriority(os.PRIO_PROCESS, 0, TRIAL_NICENESS)

    from nas import registry
    from nas.specs import JobSpec
    from nas.training import training_on
    from nas.trial_log import capture
    from workers.datasets import receive
    from workers.models import receive as receive_model

    with capture() as captured:
        receive(config.get("dataset"))  # before the spec's checks, which read a stored dataset's shape
        receive_model(config.get("model"))  # and a stored model's description
        device = allotted_device()
        log.info("trial %d (attempt %d) on node %s, training on %s: %s", config["number"], config["attempt"],
                 ray.get_runtime_context().get_node_id(), device, config["arch"])  # fmt: skip
        spec = JobSpec.model_validate(config["spec"])
        # A worker node may keep its data elsewhere than the server that planned the trial.
        data_dir = Path(os.environ.get("NAS_DATA_DIR") or config["data_dir"])

        def report(epoch: int, metrics: dict[str, float]) -> None:
            log.info("epoch %d: %s", epoch, _summary(metrics))
            tune.report({"epoch": epoch, EPOCH_METRICS: metrics, **metrics, LOG: captured.take()})

        strategy = registry.strategies.get(spec.strategy.name)
        with training_on(device):
            outcome = strategy.run_trial(spec, config["arch"], data_dir, report, config.get("parent_model"))
        log.info("trained: %s", _summary(outcome.metrics))
    tune.report(
        {
            **outcome.metrics,
            FINAL: {
                "metrics": outcome.metrics,
                "layers": outcome.layers,
                "outputs": outcome.outputs,
                "latency_observation": outcome.latency_observation,
                "last_epoch": outcome.last_epoch,
                "node_id": ray.get_runtime_context().get_node_id(),
            },
            LOG: captured.take(),
            "model": outcome.model_bytes,
            "onnx": outcome.onnx_bytes,  # for an agent target's agents; None on the server's own targets
        }
    )


def allotted_device() -> torch.device:
    """``cuda`` where Ray gave this worker a GPU (``resources.gpus``; Ray then shows it only that GPU,
    through ``CUDA_VISIBLE_DEVICES``), else the CPU: the device its trial trains on."""
    import ray
    import torch

    gpus = ray.get_gpu_ids()
    if not gpus:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"Ray gave this trial GPU {gpus}, but torch {torch.__version__} on this node has no CUDA: "
                           "install a CUDA build of torch on the GPU nodes")  # fmt: skip
    return torch.device("cuda")


def _summary(metrics: dict[str, float]) -> str:
    """The metrics a log line shows: all but the per-weight densities, four significant digits."""
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items() if not name.startswith("density:"))
