"""A trained trial's model for use outside sparse-nas, in the four formats of :mod:`nas.model_formats`.

A trial's ``latency_ms`` is measured on its *sparse inference model*
(:func:`nas.sparse.inference.to_inference`): units the pruning removed are gone (smaller dense
layers, kernel ``shrunk``) and layers sparse enough to run faster as a CSR product run so (kernel
``csr``). The exports carry that model, as far as each format can hold it:

**safetensors** is the stored training-side file (:mod:`nas.sparse.serialization`): every
``state_dict`` tensor under its plain name, each masked weight as the forward pass sees it (zeros
where pruned) with a boolean ``<weight name>_mask`` beside it, and string metadata
(``search_space``, ``search_space_params``, ``arch``, ``dataset``, ``input_shape``,
``num_classes``) from which :func:`nas.training.load_trained_model` rebuilds the masked network.

**onnx** is the sparse inference model as one self-contained ONNX graph (the
``torch.export``-based exporter): shrunk layers are the smaller dense layers the measurement
timed. ONNX Runtime has no unstructured-sparse kernel that beats its dense GEMM for general use,
so a layer that runs as CSR in torch is stored *dense, with its zeros* (as ``Gemm``/``Conv``), and
the report says which. Input ``input`` of shape ``[batch, *input_shape]``, output ``logits``, the
batch dimension dynamic; ``metadata_props`` hold the safetensors metadata, the ``kernels``, the
``sparsity_report`` and ``onnx_latency_ms``. Every export is run in onnxruntime against the torch
inference model, and a difference beyond float rounding raises :class:`ExportError`: no file.

**inference** is the torch sparse inference model itself, CSR layers included, as safetensors
plus a JSON description of its modules and kernels (:mod:`nas.sparse.inference_file`), loaded
without executing code from the file by :func:`load_inference_model`.

**report** is the per-layer sparsity report (JSON, :func:`export_trial`): for each prunable
weight its shape, density, pattern, the kernel the inference model runs it with and how the ONNX
file holds it, and the ONNX check and latencies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.model_formats import Format
from nas.sparse.csr import CSRConv2d, CSRLinear, dense_layer
from nas.sparse.serialization import read_metadata

REPORT_FORMAT = "sparse-nas-report/1"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# float32 through different kernels: far below what would change a prediction.
RTOL, ATOL = 1e-3, 1e-4
CSR_IN_ONNX = (
    "stored dense with its zeros: onnxruntime has no unstructured-sparse kernel faster than its dense one "
    "for general use, so this layer runs dense in ONNX (in torch it runs as a CSR product)"
)
_ONNX_HOLDS = {
    "dense": "dense, as in the trained model",
    "shrunk": "a smaller dense layer: the removed units are gone, as in the measured model",
    "csr": CSR_IN_ONNX,
}

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not compute what the model does."""


@dataclass(frozen=True)
class Exported:
    """A trial's exports made together: ONNX bytes, the inference file's bytes and the report."""

    onnx: bytes
    inference: bytes
    report: dict[str, Any]

    def file(self, format: Format) -> bytes:
        """The bytes of one exported ``format``."""
        if format == "report":
            return json.dumps(self.report, indent=2, sort_keys=True).encode()
        return {"onnx": self.onnx, "inference": self.inference}[format]


def export_trial(
    model_bytes: bytes,
    layers: Sequence[Mapping[str, Any]] | None = None,
    about: Mapping[str, Any] | None = None,
    *,
    min_run_time: float = 0.2,
) -> Exported:
    """The ONNX, inference file and report of a stored trial model (``nas.sparse.serialization`` bytes).

    ``layers`` is the trial's layer report (``name``, ``pattern``, ``kernel``): the kernels rebuild
    the very inference model the trial measured, without timing anything again; without them no
    layer runs as CSR. ``about`` (e.g. the trial's id and latency metrics) goes into the report as
    ``trial``. The ONNX file and the torch inference model are then timed here, one thread, batch 1,
    for ``min_run_time`` seconds each: ``onnx.latency_ms`` and ``onnx.torch_latency_ms`` in the report.
    """
    import onnxruntime

    from nas.sparse.inference import to_inference
    from nas.sparse.inference_file import save_inference_model
    from nas.sparse.stats import layer_report
    from nas.timing.measure import measure
    from nas.timing.measure import measure_calls
    from nas.timing.targets import cpu_model
    from nas.training import load_trained_model

    meta = read_metadata(model_bytes)
    input_shape = _input_shape(meta)
    trained = load_trained_model(model_bytes)
    stored = {layer["name"]: layer for layer in layers or ()}
    kernels = {name: stored.get(name, {}).get("kernel") or "dense" for name in _weight_names(trained)}
    inference, decisions = to_inference(trained, input_shape, kernels=kernels)
    kernels = {d["name"]: d["kernel"] for d in decisions}
    proto, difference = _exported_proto(inference, input_shape, meta)

    session = _session(proto.SerializeToString())
    x = np.random.default_rng(0).normal(size=(1, *input_shape)).astype(np.float32)
    onnx_ms = measure_calls(lambda: session.run([OUTPUT_NAME], {INPUT_NAME: x}), min_run_time)
    torch_ms = measure(inference, input_shape, min_run_time=min_run_time)

    report = {
        "format": REPORT_FORMAT,
        "trial": dict(about or {}),
        "search_space": meta.get("search_space"),
        "input_shape": list(input_shape),
        "num_classes": int(meta.get("num_classes", 0)),
        "layers": _layer_entries(layer_report(trained), stored, kernels, inference),
        "onnx": {
            "checked_against": "the torch sparse inference model, in onnxruntime, batches of 1 and 3",
            "max_abs_difference": difference,
            "rtol": RTOL,
            "atol": ATOL,
            "dense_in_onnx": sorted(name for name, kernel in kernels.items() if kernel == "csr"),
            "note": f"layers with kernel csr are {CSR_IN_ONNX}",
            "latency_ms": onnx_ms["p10_ms"],
            "latency_median_ms": onnx_ms["median_ms"],
            "torch_latency_ms": torch_ms["p10_ms"],
            "torch_latency_median_ms": torch_ms["median_ms"],
            "measured_on": {
                "cpu": cpu_model(),
                "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider; torch {torch.__version__}",
                "threads": 1,
                "batch_size": 1,
                "statistic": "latency_ms: 10th percentile of per-call times, as the trial's latency_ms",
            },
        },
    }
    report["totals"] = _totals(report["layers"])
    described = json.dumps(report, sort_keys=True)
    for key, value in {
        "kernels": json.dumps(kernels, sort_keys=True),
        "sparsity_report": described,
        "onnx_latency_ms": repr(onnx_ms["p10_ms"]),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    inference_bytes = save_inference_model(inference, {**meta, "sparsity_report": described}, kernels)
    return Exported(proto.SerializeToString(), inference_bytes, report)


def to_onnx(model_bytes: bytes, opset: int | None = None) -> bytes:
    """ONNX bytes of a stored trial model's inference model, checked in onnxruntime: no layer is CSR in
    ONNX, so this is the graph :func:`export_trial` writes, without its timing or report."""
    from nas.sparse.inference import to_inference
    from nas.training import load_trained_model

    meta = read_metadata(model_bytes)
    trained = load_trained_model(model_bytes)
    inference, _ = to_inference(trained, _input_shape(meta), kernels=dict.fromkeys(_weight_names(trained), "dense"))
    return _exported_proto(inference, _input_shape(meta), meta, opset)[0].SerializeToString()


def export_onnx(inference: nn.Module, input_shape: tuple[int, ...], meta: Mapping[str, str]) -> bytes:
    """ONNX bytes of an inference model (CSR layers dense), checked in onnxruntime against torch: what a
    measurement agent times for a trial on an agent target."""
    return _exported_proto(inference, input_shape, dict(meta))[0].SerializeToString()


def load_inference_model(source: bytes | str | Path, network: nn.Module | None = None) -> nn.Module:
    """The sparse inference model in an ``inference`` export (bytes or a path), ready to run (eval mode).

    The network is built from the file's metadata by its search space, or is ``network`` when given
    (a ``model_sparsity`` trial's, for example: ``onnx2torch.convert`` of the uploaded ONNX model,
    where the search space needs the server's stored copy). Only ``Linear``, ``Conv2d``,
    ``BatchNorm`` and CSR layers are built from the file's JSON; tensors are read by safetensors;
    nothing is unpickled or executed. Raises ``ValueError`` when the file does not fit.
    """
    from nas.sparse.inference_file import load_into
    from nas.training import build_network

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return load_into(network if network is not None else build_network(read_metadata(data)), data)


def run_onnx(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The ONNX model's ``logits`` for input ``x`` in onnxruntime on the CPU, one thread."""
    return _session(onnx_bytes).run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]


def _session(onnx_bytes: bytes) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _exported_proto(
    inference: nn.Module, input_shape: tuple[int, ...], meta: dict[str, str], opset: int | None = None
) -> tuple[Any, float]:
    """The ONNX proto of an inference model (CSR layers dense), and its largest difference from torch's
    outputs; raises :class:`ExportError` when the export fails or differs beyond float rounding."""
    graph = _without_csr(inference)
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many kinds; the caller needs one
        raise ExportError(f"torch.onnx.export failed for a {meta.get('search_space')} model: {exc}") from exc
    proto = program.model_proto
    proto.doc_string = "sparse-nas sparse inference model; layers that run as CSR in torch are stored dense"
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto, _checked(proto.SerializeToString(), inference, input_shape)


def _checked(onnx_bytes: bytes, inference: nn.Module, input_shape: tuple[int, ...]) -> float:
    """The largest difference between onnxruntime's and torch's outputs; :class:`ExportError` beyond rounding."""
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch in (1, 3):
        x = torch.randn(batch, *input_shape, generator=generator)
        with torch.no_grad():
            expected = inference(x).numpy()
        got = run_onnx(onnx_bytes, x.numpy())
        if got.shape != expected.shape:
            raise ExportError(f"the ONNX model answers shape {list(got.shape)}, torch {list(expected.shape)}")
        worst = max(worst, float(np.abs(got - expected).max()))
        if not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
            raise ExportError(f"the ONNX model differs from the torch inference model (max abs difference {worst:.3g})")
    return worst


def _without_csr(inference: nn.Module) -> nn.Module:
    """A copy of ``inference`` with every CSR layer back to its dense ``Linear``/``Conv2d``: what ONNX can hold."""
    import copy

    graph = copy.deepcopy(inference)
    for path, module in list(graph.named_modules()):
        if isinstance(module, (CSRLinear, CSRConv2d)):
            if not path:
                return dense_layer(module)
            graph.set_submodule(path, dense_layer(module))
    return graph


def _layer_entries(
    trained: list[dict[str, Any]],
    stored: Mapping[str, Mapping[str, Any]],
    kernels: Mapping[str, str],
    inference: nn.Module,
) -> list[dict[str, Any]]:
    """One report entry per prunable weight of the trained model."""
    entries = []
    for layer in trained:
        name, kernel = layer["name"], kernels[layer["name"]]
        shape = _inference_shape(inference, name)
        entries.append({
            "layer": name,
            "shape": layer["shape"],
            "density": layer["density"],
            "nonzero": round(layer["density"] * int(np.prod(layer["shape"]))),
            "pattern": stored.get(name, {}).get("pattern") or layer["pattern"],
            "kernel": kernel,
            "inference_shape": shape,
            "onnx": _ONNX_HOLDS[kernel],
            "onnx_weights": int(np.prod(shape)),
        })  # fmt: skip
    return entries


def _inference_shape(inference: nn.Module, name: str) -> list[int]:
    """The shape weight ``name`` has in the inference model (smaller when shrunk; the dense shape of a CSR layer)."""
    path, _, attr = name.rpartition(".")
    module = inference.get_submodule(path)
    if isinstance(module, (CSRLinear, CSRConv2d)):
        return list(dense_layer(module).weight.shape)
    return list(getattr(module, attr).shape)


def _totals(layers: list[dict[str, Any]]) -> dict[str, Any]:
    weights = sum(int(np.prod(layer["shape"])) for layer in layers)
    nonzero = sum(layer["nonzero"] for layer in layers)
    return {
        "weights": weights,
        "nonzero": nonzero,
        "sparsity": 1 - nonzero / weights if weights else 0.0,
        "onnx_weights": sum(layer["onnx_weights"] for layer in layers),
    }


def _weight_names(model: nn.Module) -> list[str]:
    from nas.sparse.masks import prunable_weights

    return list(prunable_weights(model))


def _input_shape(meta: dict[str, str]) -> tuple[int, ...]:
    if "input_shape" not in meta:
        raise ExportError("the model file has no input_shape in its metadata")
    return tuple(int(d) for d in json.loads(meta["input_shape"]))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs progress and notes about optional packages (torchvision) that are
    noise in a server's log; keep only its errors."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
