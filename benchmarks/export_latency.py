"""What a trial's exports cost to run: the torch sparse inference model, its ONNX file in onnxruntime,
and the masked model run dense, for LeNet-300-100 (784-300-100-10, ReLU) at batch 1, one thread.

Each network is built by the ``sparse_mlp`` search space, masked, saved as a trial saves it, and
exported with :func:`nas.export.export_trial`, which times the ONNX file and the torch inference
model side by side; the masked model is timed with :func:`nas.latency.measure` as a trial's
``masked_latency_ms``. All three are the 10th percentile of per-call times. Masks:

* ``unstructured``: random masks at 90%, 95% and 98% in every layer; the kernels are chosen by
  timing, as a trial chooses them, so wide layers may run as CSR in torch (dense in ONNX);
* ``channel``: half of each hidden layer's units masked whole: both formats run the shrunk network.

Weights are random: latency depends on the shapes and zeros, not on what the network learned.

    python benchmarks/export_latency.py [--min-run-time 0.3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nas import registry
from nas.export import export_trial
from nas.latency import measure
from nas.sparse.inference import to_inference
from nas.sparse.masks import prunable_weights, set_mask
from nas.sparse.serialization import save_model
from nas.timing.targets import cpu_model

ARCH = {"depth": 2, "width_0": 300, "width_1": 100, "activation": "relu"}
INPUT = (1, 28, 28)


def masked_network(kind: str, sparsity: float, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = registry.search_spaces.create("sparse_mlp", {}).build(ARCH, INPUT, 10)
    for name, (module, attr) in prunable_weights(model).items():
        weight = getattr(module, attr)
        if kind == "unstructured":
            mask = torch.rand_like(weight) >= sparsity
        else:
            mask = torch.ones_like(weight, dtype=torch.bool)
            if name != "out.weight":
                mask[weight.shape[0] // 2 :] = False
        set_mask(module, attr, mask)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-run-time", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    metadata = {
        "search_space": "sparse_mlp", "search_space_params": "{}", "arch": json.dumps(ARCH), "dataset": "mnist",
        "input_shape": json.dumps(list(INPUT)), "num_classes": "10",
    }  # fmt: skip
    print(f"{cpu_model()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| masks | sparsity | kernels fc0 / fc1 / out | masked dense (ms) | torch inference (ms) | ONNX (ms) | ONNX weights |")
    print("|---|---|---|---|---|---|---|")
    for kind, sparsity in [("unstructured", 0.9), ("unstructured", 0.95), ("unstructured", 0.98), ("channel", 0.5)]:
        model = masked_network(kind, sparsity)
        _, decisions = to_inference(model, INPUT)  # the kernels a trial would choose on this machine
        layers = [{"name": d["name"], "kernel": d["kernel"]} for d in decisions]
        exported = export_trial(save_model(model, metadata), layers, min_run_time=args.min_run_time)
        masked = measure(model, INPUT, min_run_time=args.min_run_time)["p10_ms"]
        onnx = exported.report["onnx"]
        kernels = " / ".join(entry["kernel"] for entry in exported.report["layers"])
        totals = exported.report["totals"]
        print(
            f"| {kind} | {sparsity:.0%} | {kernels} | {masked:.4f} | {onnx['torch_latency_ms']:.4f} | "
            f"{onnx['latency_ms']:.4f} | {totals['onnx_weights']} of {totals['weights']} |"
        )


if __name__ == "__main__":
    main()
