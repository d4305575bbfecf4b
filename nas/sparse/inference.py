"""Turn a trained masked model into a faster inference model that computes the same function.

Zeros only pay off on a CPU when a kernel skips them, and which kernel is faster depends on the
layer's shape, its density, the batch size and the machine (unstructured sparsity beats dense BLAS
only from roughly 90% on x86; see ``shared/reference/latency.md``). So the converter first removes
units that are gone altogether ("shrunk": smaller dense layers, the safe win of structured pruning,
HALP and Network Slimming), then times every prunable layer both dense and as a CSR product
(:mod:`nas.sparse.csr`: ``torch.sparse`` on MKL, or ``embedding_bag`` over the same CSR arrays
for wide operands) at the target batch size, and keeps the faster.

A trial's saved model is rebuilt with ``nas.training.load_trained_model`` and converted again;
passing the stored per-layer ``kernels`` skips the timing and gives back the same inference model.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from nas.timing.measure import measure
from nas.timing.targets import TARGETS
from nas.sparse.csr import csr_layer
from nas.sparse.shrink import shrink
from nas.sparse.masks import prunable_weights
from nas.sparse.stats import run_hooked

KERNELS = ("dense", "csr", "shrunk")
_LAYERS = (nn.Linear, nn.Conv2d)
_ROUNDS = 3  # interleaved timing rounds per layer
_CSR_MARGIN = 0.95  # CSR must be at least 5% faster to be chosen: near-ties stay dense, which is predictable
_CHECK_TOLERANCE = 1e-4  # relative to the output scale; a self-check against conversion bugs, not the 1e-5 goal


def to_inference(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    target: str = "cpu",
    *,
    kernels: dict[str, str] | None = None,
    num_threads: int = 1,
    min_run_time: float = 0.02,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A plain-module copy of ``model`` (masks baked in, no parametrizations) and one decision per prunable weight.

    Each decision is ``{"name", "kernel", "dense_ms", "chosen_ms"}``: the weight's name, the kernel
    its layer runs with ("dense", "csr" or "shrunk"), and the layer's median latency on inputs of
    ``(batch_size, ...)`` with ``num_threads`` threads before and after conversion. RNN weights stay
    dense and are not timed (``None``). With ``kernels`` (weight name -> kernel, e.g. from a stored
    trial) nothing is timed and both times are ``None``. ``model`` itself is left unchanged.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown latency target {target!r}; valid: {', '.join(TARGETS)}")
    reference = plain_copy(model).eval()
    converted = copy.deepcopy(reference)
    shrink(converted, input_shape)
    names = list(prunable_weights(reference))
    if kernels is not None:
        _check_kernels(kernels, names)

    before, after = _input_shapes(reference, input_shape), _input_shapes(converted, input_shape)
    timing = {"target": target, "batch_size": batch_size, "num_threads": num_threads, "min_run_time": min_run_time}

    decisions = []
    for name, (original, _) in prunable_weights(reference).items():
        path = name.rpartition(".")[0]
        layer = converted.get_submodule(path)
        decision = {"name": name, "kernel": "dense", "dense_ms": None, "chosen_ms": None}
        if isinstance(layer, _LAYERS) and original in before:  # not an RNN weight, and the layer runs
            sparse = csr_layer(layer) if bool((layer.weight == 0).any()) else None
            if kernels is None:
                decision.update(_timed_choice((original, before[original]), (layer, after[layer]), sparse, timing))
            else:
                wants_csr = kernels[name] == "csr" and sparse is not None
                decision["kernel"] = "csr" if wants_csr else _structure(original, layer)
            if decision["kernel"] == "csr":
                converted = _replaced(converted, path, sparse)
        decisions.append(decision)

    converted.requires_grad_(False)
    _check_same_function(reference, converted, input_shape, batch_size)
    return converted, decisions


def _structure(original: nn.Module, layer: nn.Module) -> str:
    """``"shrunk"`` if the dense ``layer`` lost units (or inputs) of the ``original``, else ``"dense"``."""
    return "shrunk" if layer.weight.shape != original.weight.shape else "dense"


def _timed_choice(
    original: tuple[nn.Module, tuple[int, ...]],
    current: tuple[nn.Module, tuple[int, ...]],
    sparse: nn.Module | None,
    timing: dict[str, Any],
) -> dict[str, Any]:
    """``kernel``, ``dense_ms`` and ``chosen_ms`` of one layer: its dense (or shrunk) form, or CSR if clearly faster.

    ``original`` and ``current`` are the layer before and after shrinking, each with its input shape.
    """
    kernel = _structure(original[0], current[0])
    candidates = {"dense": original, kernel: current}
    if sparse is not None:
        candidates["csr"] = (sparse, current[1])
    times = dict(zip(candidates, _interleaved_latencies(list(candidates.values()), timing)))
    if "csr" in times and times["csr"] < _CSR_MARGIN * times[kernel]:
        kernel = "csr"
    return {"kernel": kernel, "dense_ms": times["dense"], "chosen_ms": times[kernel]}


def _interleaved_latencies(candidates: list[tuple[nn.Module, tuple[int, ...]]], timing: dict[str, Any]) -> list[float]:
    """Each (layer, input shape)'s median latency over interleaved rounds, so a slow phase hits all alike."""
    runs: list[list[float]] = [[] for _ in candidates]
    for _ in range(_ROUNDS):
        for times, (layer, shape) in zip(runs, candidates):
            times.append(measure(layer, shape, **timing)["median_ms"])
    return [statistics.median(times) for times in runs]


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parametrized tensor baked into a plain parameter; ``model`` keeps its own.

    ``copy.deepcopy`` lets the copy share the class torch generated for a parametrized module, and
    removing a parametrization deletes the tensor's property from that class, which would break
    ``model``; so each parametrized copy first gets a class of its own.
    """
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if parametrize.is_parametrized(module):
            shared = type(module)
            own = {k: v for k, v in shared.__dict__.items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(shared.__name__, shared.__bases__, own)
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return plain


def _check_kernels(kernels: dict[str, str], names: list[str]) -> None:
    unknown = sorted(set(kernels) - set(names))
    bad = sorted(k for k in kernels.values() if k not in KERNELS)
    missing = sorted(set(names) - set(kernels))
    if unknown or bad or missing:
        raise ValueError(
            f"kernels do not fit the model: unknown weights {unknown}, missing {missing}, unknown kernels {bad}"
        )


def _input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, tuple[int, ...]]:
    """Each ``Linear``/``Conv2d`` layer's input shape for one example, without the batch dimension."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        shapes.setdefault(module, tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, _LAYERS)]
    run_hooked(model, input_shape, hooks)
    return shapes


def _replaced(root: nn.Module, path: str, layer: nn.Module) -> nn.Module:
    """``root`` with the submodule at ``path`` replaced by ``layer`` (``layer`` itself when ``path`` is the root)."""
    if not path:
        return layer
    root.set_submodule(path, layer)
    return root


def _check_same_function(
    reference: nn.Module, converted: nn.Module, input_shape: tuple[int, ...], batch_size: int
) -> None:
    """Raise if the converted model's output differs from the reference's beyond float rounding."""
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = reference(x), converted(x)
    error = float((expected - actual).abs().max())
    if error > _CHECK_TOLERANCE * (1 + float(expected.abs().max())):
        raise RuntimeError(f"the converted model differs from the original by {error:.3g}; conversion bug")
