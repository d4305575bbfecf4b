"""The dense baseline of a job over a given model: its accuracy and latency, measured once per job on a worker.

A space made from a trained network (:meth:`~nas.search_space.SearchSpace.reference_model`) is
searched to find sparse versions that keep its accuracy and run faster, so every trial is shown
beside the network it came from: ``dense_accuracy`` and ``dense_latency_ms``, measured here once,
on a worker like the trials' (same data, same target, same timing), and from them each trial's
``accuracy_drop`` and ``speedup`` (:func:`nas.metrics.beside_baseline`). Every trial the runner
creates carries the baseline in its metrics, so a restarted runner reads it back from the
job's trials instead of measuring again.
"""

from __future__ import annotations

import os
from typing import Any

import ray


def measure_baseline(config: dict[str, Any]) -> dict[str, float]:
    """``dense_accuracy`` and ``dense_latency_ms`` of the job's reference model; ``config`` as a trial's
    (spec, data_dir and the dataset's and model's deliveries). Empty when the space has no reference."""
    return ray.get(_measure.remote(config))


@ray.remote(num_cpus=1)
def _measure(config: dict[str, Any]) -> dict[str, float]:
    from pathlib import Path

    from nas import registry
    from nas.latency import measure
    from nas.specs import JobSpec
    from nas.timing.targets import all_targets
    from nas.training import evaluate, load_data
    from workers.datasets import receive as receive_dataset
    from workers.models import receive as receive_model
    from workers.trainable import TRIAL_NICENESS

    os.setpriority(os.PRIO_PROCESS, 0, TRIAL_NICENESS)
    receive_dataset(config.get("dataset"))
    receive_model(config.get("model"))
    spec = JobSpec.model_validate(config["spec"])
    data = load_data(spec, Path(os.environ.get("NAS_DATA_DIR") or config["data_dir"]))
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    model = space.reference_model(data.input_shape, data.num_classes)
    if model is None:
        return {}
    _, accuracy = evaluate(model.eval(), data.x_test, data.y_test)
    if spec.target not in all_targets():  # an agent target: the dense model's latency is not measured there
        return {"dense_accuracy": accuracy}
    latency = measure(model, data.input_shape, target=spec.target, batch_size=1)
    return {"dense_accuracy": accuracy, "dense_latency_ms": latency["p10_ms"]}
