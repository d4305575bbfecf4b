#!/usr/bin/env python
"""One sparse_cnn trial on MNIST, timed on the CPU and on a GPU, each run as the service runs a trial.

    NAS_DATA_DIR=/path/holding/mnist python benchmarks/gpu_trial.py [--epochs 1] [--train-limit 20000]
        [--batch-size 128] [--mixed-precision] [--gpus 1]

Each trial is a Ray task given what a job's ``resources`` would give it (``{cpus: 1, gpus: 0}``,
then ``{cpus: 1, gpus: --gpus}``), so the trainer picks its device as it does in the service
(:func:`workers.trainable.allotted_device`) and trains, recalibrates, evaluates, converts and measures
the same Conv-4 network (magnitude pruning to 90%) with the same seed. Prints each trial's device,
``train_time_s`` (the epochs, BatchNorm recalibration and the validation pass), wall time (with
the dataset load and the latency measurement on the CPU target) and accuracy, then the GPU's
speed-up on ``train_time_s``. Without a CUDA GPU it times the CPU trial, says so and exits 0.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import ray
import torch

SPACE = {  # one network: Conv-4 (two blocks of two 64-channel convolutions) and one hidden layer of 256
    "families": ["conv"], "conv_min_blocks": 2, "conv_max_blocks": 2, "conv_width_choices": [64],
    "fc_min_depth": 1, "fc_max_depth": 1, "fc_width_choices": [256],
}  # fmt: skip


@ray.remote
def timed_trial(spec_json: dict[str, Any], arch: dict[str, Any], data_dir: str) -> dict[str, Any]:
    """Run one trial in a Ray worker; its device is the one Ray's resources gave it."""
    from nas.specs import JobSpec
    from nas.training import run_trial, training_on
    from workers.trainable import allotted_device

    spec = JobSpec.model_validate(spec_json)
    device = allotted_device()
    start = time.perf_counter()
    with training_on(device):
        outcome = run_trial(spec, arch, Path(data_dir), lambda epoch, metrics: None)
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.machine()})",
        "wall_s": time.perf_counter() - start,
        "train_time_s": outcome.metrics["train_time_s"],
        "val_accuracy": outcome.metrics["val_accuracy"],
        "model_bytes": len(outcome.model_bytes or b""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=20000, help="MNIST training examples (the validation split comes out of them)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--gpus", type=float, default=1.0, help="resources.gpus of the GPU trial (a fraction shares one)")
    parser.add_argument("--mixed-precision", action="store_true", help="training.mixed_precision on the GPU trial")
    args = parser.parse_args()

    from nas import registry
    from nas.specs import JobSpec

    data_dir = os.environ.get("NAS_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    base = {
        "search_space": {"name": "sparse_cnn", "params": SPACE},
        "dataset": {"name": "mnist", "params": {"train_limit": args.train_limit}},
        "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.9}},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size},
    }
    space = registry.search_spaces.create("sparse_cnn", SPACE)
    arch = space.sample(random.Random(0))
    runs = {"cpu": JobSpec.model_validate(base)}
    gpus = torch.cuda.device_count()
    if gpus:
        training = {**base["training"], "mixed_precision": args.mixed_precision}
        runs["gpu"] = JobSpec.model_validate({**base, "training": training, "resources": {"cpus": 1, "gpus": args.gpus}})
    ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"sparse_cnn {arch} on MNIST ({args.train_limit} training examples), {args.epochs} epochs, "
          f"batch {args.batch_size}; torch {torch.__version__}")  # fmt: skip
    results = {}
    for name, spec in runs.items():
        task = timed_trial.options(num_cpus=spec.resources.cpus, num_gpus=spec.resources.gpus)
        results[name] = ray.get(task.remote(spec.model_dump(mode="json"), arch, data_dir))
        r = results[name]
        print(f"{name}: {r['device']}: train_time_s {r['train_time_s']:.2f}, wall {r['wall_s']:.2f} s, "
              f"val_accuracy {r['val_accuracy']:.4f}, saved model {r['model_bytes']} bytes")  # fmt: skip
    ray.shutdown()
    if "gpu" not in results:
        print("no CUDA GPU here (torch.cuda.device_count() is 0): the GPU trial was not run")
        return
    precision = "mixed precision" if args.mixed_precision else "float32"
    print(f"speed-up of the GPU trial ({precision}, gpus {args.gpus:g}) on train_time_s: "
          f"{results['cpu']['train_time_s'] / results['gpu']['train_time_s']:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
