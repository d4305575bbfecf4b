#!/usr/bin/env python
"""2:4 semi-structured sparsity under an agent's ``torch-cuda`` runtime: dense fp16 against 2:4, side by side.

    python benchmarks/agent_cuda.py [--min-run-time S]

Each network is exported to ONNX as a trial is (``nas.latency.timers.module_to_onnx``) and timed
by the agent's own runtime code (``nas.agent.measure.measure_model``): converted by the service's
converter, eligible Linear weights stored semi-structured, CUDA events, the service's protocol.
The dense and 2:4 forms of each network are timed one after the other, twice, in alternating order,
so a slow phase of the GPU hits both; the noise line compares the two dense timings. Needs an
NVIDIA GPU of the Ampere generation or later; elsewhere it says so and exits 0. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from nas.agent.measure import Timing, measure_model
from nas.latency.timers import module_to_onnx

NETWORKS = {  # name -> (layer widths, batch size)
    "mlp 784-1024-1024-10, batch 1": ((784, 1024, 1024, 10), 1),
    "mlp 784-1024-1024-10, batch 256": ((784, 1024, 1024, 10), 256),
    "mlp 1024-4096-4096-1024, batch 64": ((1024, 4096, 4096, 1024), 64),
    "linear 8192-8192, batch 4096": ((8192, 8192), 4096),
}


def network(widths: tuple[int, ...], two_four: bool, seed: int = 0) -> nn.Module:
    """An MLP of ``widths``; with ``two_four`` every eligible hidden weight keeps the 2 largest of each 4 inputs."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).eval()
    if two_four:
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, nn.Linear) and layer.in_features % 64 == 0 and layer.out_features % 64 == 0:
                    groups = layer.weight.view(layer.out_features, -1, 4)
                    keep = groups.abs().topk(2, dim=-1).indices
                    mask = torch.zeros_like(groups).scatter_(-1, keep, 1.0)
                    layer.weight.copy_((groups * mask).view_as(layer.weight))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-run-time", type=float, default=0.3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure")
        return
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {platform.node()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")  # fmt: skip
    print("| network | dense fp16 ms (p10) | 2:4 ms (p10) | speedup | 2:4 layers | dense repeat agreement |")
    print("|---|---|---|---|---|---|")
    for name, (widths, batch) in NETWORKS.items():
        files = {form: module_to_onnx(network(widths, form == "2:4"), (widths[0],)) for form in ("dense", "2:4")}
        timing = Timing("torch-cuda", (widths[0],), batch_size=batch, min_run_time=args.min_run_time)
        runs: dict[str, list[dict[str, float]]] = {"dense": [], "2:4": []}
        for order in (("dense", "2:4"), ("2:4", "dense")):
            for form in order:
                runs[form].append(measure_model(files[form], timing))
        dense = min(r["p10_ms"] for r in runs["dense"])
        sparse = min(r["p10_ms"] for r in runs["2:4"])
        a, b = (r["p10_ms"] for r in runs["dense"])
        print(f"| {name} | {dense:.4f} | {sparse:.4f} | {dense / sparse:.2f}x | "
              f"{int(runs['2:4'][0].get('semi_structured_layers', 0))} | {min(a, b) / max(a, b):.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
