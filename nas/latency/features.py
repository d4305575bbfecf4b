"""Per-layer features of any ``nn.Module`` built from standard layers, read from one traced forward pass.

Eager PyTorch runs one kernel per module (no fusion), so a model's latency is close to the sum of
its layers' latencies plus the Python glue between them. :func:`trace` runs the model once with
forward hooks on every known layer and a ``TorchFunctionMode`` that sees the torch calls made
*between* layers (a residual ``x + y``, ``torch.flatten`` in a ``forward``), and returns one
:class:`Layer` per executed call with its shapes, FLOPs, bytes moved and sparsity.

A prunable ``Linear``/``Conv2d`` whose weight has zeros also carries its CSR alternative
(``alt``): the layer as :func:`nas.sparse.inference.to_inference` would run it as a CSR product,
so a predictor can choose the faster kernel as the converter does. A module type without a model
here raises :class:`UnsupportedLayer` naming it; nothing is ever silently counted as zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from nas.latency.shrinkage import Kept
from nas.sparse.csr import BAG_MIN_COLUMNS, CSRConv2d, CSRLinear

KINDS: dict[str, tuple[str, ...]] = {
    "linear": ("m", "k", "n", "bias", "functional", "semi_structured", "flops", "bytes", "roofline"),
    "conv": (
        "batch", "cin", "cout", "h", "w", "ho", "wo", "kh", "kw", "stride", "groups", "cin_per_group",
        "depthwise", "conv1d", "flops", "bytes", "roofline",
    ),
    "csr_linear": ("m", "k", "n", "nnz", "density", "bag", "pattern", "row_cv", "flops", "bytes", "roofline"),
    "csr_conv": (
        "batch", "cin", "cout", "h", "w", "ho", "wo", "kh", "kw", "stride", "columns", "nnz", "density", "bag",
        "pattern", "row_cv", "flops", "bytes", "roofline",
    ),
    "rnn": ("cell", "gates", "input", "hidden", "layers", "directions", "steps", "batch", "flops", "bytes", "roofline"),
    "norm": ("op", "elements", "channels", "bytes", "roofline"),
    "pool": ("op", "elements_in", "elements_out", "window", "bytes", "roofline"),
    "elementwise": ("op", "op_class", "module", "elements_in", "elements_out", "inputs", "bytes", "roofline"),
}  # fmt: skip
CATEGORICAL = ("op", "cell", "pattern")

# Categories of the "op" feature; an op outside the list is "other". Append only: indices are stored.
OPS: tuple[str, ...] = (
    "other", "Identity", "Dropout", "Flatten", "Unflatten", "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU",
    "GELU", "SiLU", "Mish", "Tanh", "Sigmoid", "Hardswish", "Hardsigmoid", "Hardtanh", "Softplus", "PReLU",
    "Softmax", "LogSoftmax", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "MaxPool1d", "MaxPool2d",
    "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
    "fn:add", "fn:mul", "fn:sub", "fn:div", "fn:cat", "fn:view", "fn:relu", "fn:sigmoid", "fn:tanh", "fn:mean",
    "fn:sum", "fn:softmax", "fn:other",
)  # fmt: skip
_OP_INDEX = {name: i for i, name in enumerate(OPS)}
# Cost class of an element-wise op, so that rare ops borrow from common ones: 0 no data touched (views,
# Identity, eval-mode Dropout), 1 cheap arithmetic, 2 transcendental functions, 3 reductions and softmax.
_FREE = {"Identity", "Dropout", "Flatten", "Unflatten", "fn:view"}
_TRANSCENDENTAL = {"ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Tanh", "Sigmoid", "Softplus", "fn:sigmoid", "fn:tanh"}
_REDUCING = {"Softmax", "LogSoftmax", "fn:mean", "fn:sum", "fn:softmax"}


def op_class(op: str) -> int:
    if op in _FREE:
        return 0
    if op in _TRANSCENDENTAL:
        return 2
    if op in _REDUCING:
        return 3
    return 1
CELLS = {"RNN_TANH": 0, "RNN_RELU": 0, "GRU": 1, "LSTM": 2}
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}
PATTERNS = {"unstructured": 0, "nm": 1, "rows": 2}

_ELEMENTWISE = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Flatten, nn.Unflatten,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.PReLU, nn.Softmax, nn.LogSoftmax,
)  # fmt: skip
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_VIEWS = {
    "view", "reshape", "flatten", "unflatten", "unsqueeze", "squeeze", "transpose", "permute", "t", "getitem",
    "select", "narrow", "expand", "expand_as", "chunk", "split", "unbind", "view_as", "contiguous",
}
_IGNORED = {
    "__get__", "size", "dim", "numel", "is_contiguous", "__len__", "__iter__", "__format__", "__repr__", "stride",
    "data_ptr", "element_size", "__bool__", "__index__", "__int__", "__float__", "_has_compatible_shallow_copy_type",
    "__hash__", "__eq__", "__contains__", "__reduce_ex__", "__setstate__", "__deepcopy__", "is_floating_point",
    "get_device", "__torch_function__",
}  # fmt: skip
_SUPPORTED_NAMES = (
    "Linear, Conv1d, Conv2d (grouped, depthwise), BatchNorm1d/2d, LayerNorm, GroupNorm, activations, Softmax, "
    "max/avg/adaptive pooling, Flatten, Unflatten, Dropout, Identity, LSTM, GRU, RNN, the CSR layers of "
    "nas.sparse, and containers of these"
)


class UnsupportedLayer(ValueError):
    """A module type the latency predictor has no model for."""


@dataclass
class Layer:
    """One executed layer: its predictor ``kind``, features ``x`` and, for a sparse layer, its CSR ``alt``."""

    name: str
    kind: str
    x: dict[str, float]
    weight: str | None = None  # the prunable weight's state_dict name, for kernel choices and densities
    alt: Layer | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "x": self.x}
        if self.weight is not None:
            data["weight"] = self.weight
        if self.alt is not None:
            data["alt"] = self.alt.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layer:
        alt = data.get("alt")
        return cls(
            data["name"], data["kind"], {k: float(v) for k, v in data["x"].items()}, data.get("weight"),
            None if alt is None else cls.from_json(alt),
        )  # fmt: skip


@dataclass
class Trace:
    """The layers of one forward pass and the glue around them."""

    layers: list[Layer]
    container_calls: int
    input_elements: int
    peak_elements: int
    params: int
    extra: dict[str, float] = field(default_factory=dict)

    def model_features(self) -> dict[str, float]:
        """Whole-model quantities the correction model reads (with the predicted times it adds)."""
        kinds = [layer.kind for layer in self.layers]
        return {
            "layers": float(len(self.layers)),
            "module_calls": float(self.container_calls + sum(not _functional(l) for l in self.layers)),
            "functional_calls": float(sum(_functional(l) for l in self.layers)),
            "containers": float(self.container_calls),
            "input_elements": float(self.input_elements),
            "peak_elements": float(self.peak_elements),
            "params": float(self.params),
            "rnn_layers": float(kinds.count("rnn")),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [layer.to_json() for layer in self.layers],
            "container_calls": self.container_calls,
            "input_elements": self.input_elements,
            "peak_elements": self.peak_elements,
            "params": self.params,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Trace:
        return cls(
            [Layer.from_json(layer) for layer in data["layers"]], int(data["container_calls"]),
            int(data["input_elements"]), int(data["peak_elements"]), int(data["params"]),
        )  # fmt: skip


def _functional(layer: Layer) -> bool:
    return layer.name.startswith("<fn:")


def op_index(name: str) -> int:
    return _OP_INDEX.get(name, 0)


def _is_csr(module: nn.Module) -> str | None:
    if isinstance(module, CSRLinear):
        return "csr_linear"
    if isinstance(module, CSRConv2d):
        return "csr_conv"
    return None


def _leaf_kind(module: nn.Module) -> str | None:
    """The predictor kind of a module the tracer treats as one layer; ``None`` for a container."""
    csr = _is_csr(module)
    if csr is not None:
        return csr
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.padding_mode != "zeros":
            raise UnsupportedLayer(f"{type(module).__name__} with padding_mode={module.padding_mode!r}")
        return "conv"
    if isinstance(module, nn.RNNBase):
        return "rnn"
    if isinstance(module, _NORMS):
        return "norm"
    if isinstance(module, _POOLS):
        return "pool"
    if isinstance(module, _ELEMENTWISE):
        return "elementwise"
    return None


def _module_op(module: nn.Module) -> str:
    """The ``OPS`` entry of a module: its standard base class's name (a parametrized Linear is a Linear)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch.nn.modules"):
            name = cls.__name__
            return "Dropout" if "Dropout" in name else name
    return type(module).__name__


def _leaves(model: nn.Module) -> tuple[dict[nn.Module, tuple[str, str]], list[nn.Module]]:
    """Known layers (module -> (path, kind)) and containers; :class:`UnsupportedLayer` for anything else."""
    leaves: dict[nn.Module, tuple[str, str]] = {}
    containers: list[nn.Module] = []

    def walk(module: nn.Module, path: str) -> None:
        kind = _leaf_kind(module)
        if kind is not None:
            leaves.setdefault(module, (path, kind))
            return
        children = [(name, child) for name, child in module.named_children() if name != "parametrizations"]
        if not children:
            where = f"layer {path!r}" if path else "the model"
            raise UnsupportedLayer(
                f"cannot predict the latency of {where}: {type(module).__module__}.{type(module).__name__} is not a "
                f"layer type the latency predictor knows; supported: {_SUPPORTED_NAMES}"
            )
        own = [name for name, _ in module.named_parameters(recurse=False)]
        if own:  # computes with its own weights somewhere in its forward: no model of that here
            raise UnsupportedLayer(
                f"cannot predict the latency of {f'layer {path!r}' if path else 'the model'}: "
                f"{type(module).__module__}.{type(module).__name__} computes with parameters of its own "
                f"({', '.join(own)}), which the latency predictor has no model for; supported: {_SUPPORTED_NAMES}"
            )
        containers.append(module)
        for name, child in children:
            walk(child, f"{path}.{name}" if path else name)

    walk(model, "")
    return leaves, containers


def _itemsize(tensor: torch.Tensor) -> int:
    return tensor.element_size()


def _weight(module: nn.Module, attr: str = "weight") -> torch.Tensor:
    return getattr(module, attr).detach()


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _linear_layer(
    name: str, module: nn.Linear, x: torch.Tensor, weight_name: str, k: int | None = None, n: int | None = None
) -> Layer:
    """Features of a ``Linear`` (with ``k`` inputs and ``n`` outputs if shrinking changes them)."""
    weight = _weight(module)
    m = x.numel() // max(module.in_features, 1)
    k = module.in_features if k is None else k
    n = module.out_features if n is None else n
    semi = float(type(weight).__name__.startswith("SparseSemiStructured"))
    size = _itemsize(x)
    features = {
        "m": m, "k": k, "n": n, "bias": float(module.bias is not None), "functional": 0.0, "semi_structured": semi,
        "flops": 2.0 * m * k * n, "bytes": float(size * (m * k + k * n + m * n)),
    }  # fmt: skip
    return Layer(name, "linear", features, weight_name)


def _conv_layer(
    name: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor, weight_name: str,
    cin: int | None = None, cout: int | None = None,
) -> Layer:  # fmt: skip
    """Features of a ``Conv1d``/``Conv2d`` (with ``cin``/``cout`` channels if shrinking changes them)."""
    conv1d = isinstance(module, nn.Conv1d)
    batch = x.shape[0] if x.dim() == (3 if conv1d else 4) else 1
    groups = module.groups
    cin = module.in_channels if cin is None else cin
    cout = module.out_channels if cout is None else cout
    h, w = (1, x.shape[-1]) if conv1d else (x.shape[-2], x.shape[-1])
    ho, wo = (1, out.shape[-1]) if conv1d else (out.shape[-2], out.shape[-1])
    kh, kw = (1, module.kernel_size[0]) if conv1d else module.kernel_size
    size = _itemsize(x)
    flops = 2.0 * batch * cout * ho * wo * (cin // groups) * kh * kw
    moved = size * (batch * cin * h * w + cout * (cin // groups) * kh * kw + batch * cout * ho * wo)
    features = {
        "batch": batch, "cin": cin, "cout": cout, "h": h, "w": w, "ho": ho, "wo": wo, "kh": kh, "kw": kw,
        "stride": float(module.stride[0]), "groups": groups, "cin_per_group": cin // groups,
        "depthwise": float(groups == cin and groups > 1), "conv1d": float(conv1d), "flops": flops, "bytes": float(moved),
    }  # fmt: skip
    return Layer(name, "conv", features, weight_name)


def sparsity_pattern(weight: torch.Tensor) -> tuple[int, float]:
    """``PATTERNS`` index of a 2-D view of ``weight`` and the coefficient of variation of its row nonzeros."""
    matrix = weight.reshape(weight.shape[0], -1)
    nonzero = matrix != 0
    rows = nonzero.sum(dim=1).float()
    cv = float(rows.std(unbiased=False) / rows.mean().clamp_min(1e-9)) if rows.numel() > 1 else 0.0
    if bool((rows == 0).any()):
        return PATTERNS["rows"], cv
    cols = matrix.shape[1]
    if cols % 4 == 0 and bool((nonzero.view(matrix.shape[0], cols // 4, 4).sum(-1) <= 2).all()):
        return PATTERNS["nm"], cv
    return PATTERNS["unstructured"], cv


def _csr_features(
    kind: str, base: Mapping[str, float], nnz: float, rows: int, pattern: int, row_cv: float, size: int
) -> dict[str, float]:
    """CSR-product features of a layer with ``nnz`` nonzeros in a ``rows x (numel / rows)`` weight."""
    if kind == "csr_linear":
        m, k, n = base["m"], base["k"], base["n"]
        density = nnz / max(k * n, 1)
        moved = 8 * nnz + 4 * (n + 1) + size * (m * k + m * n)
        return {
            "m": m, "k": k, "n": n, "nnz": nnz, "density": density, "bag": float(m >= BAG_MIN_COLUMNS),
            "pattern": pattern, "row_cv": row_cv, "flops": 2.0 * m * nnz, "bytes": float(moved),
        }  # fmt: skip
    columns = base["batch"] * base["ho"] * base["wo"]
    patch = base["cin"] * base["kh"] * base["kw"]
    density = nnz / max(rows * patch, 1)
    moved = 8 * nnz + 4 * (rows + 1) + size * (base["batch"] * base["cin"] * base["h"] * base["w"])
    moved += size * (patch * columns + base["batch"] * base["cout"] * base["ho"] * base["wo"])
    keep = ("batch", "cin", "cout", "h", "w", "ho", "wo", "kh", "kw", "stride")
    return {
        **{key: base[key] for key in keep}, "columns": columns, "nnz": nnz, "density": density,
        "bag": float(columns >= BAG_MIN_COLUMNS), "pattern": pattern, "row_cv": row_cv,
        "flops": 2.0 * columns * nnz, "bytes": float(moved),
    }  # fmt: skip


def csr_alternative(
    layer: Layer, weight: torch.Tensor, density: float | None = None, pattern: str = "unstructured"
) -> Layer | None:
    """The CSR form of a dense ``linear``/``conv`` layer (one group, 2-D conv), or ``None`` if it has none.

    ``density`` (with its ``pattern``) overrides the weight's own nonzero fraction, for a model whose
    masks are not made yet; a layer without zeros has no CSR alternative worth timing.
    """
    if layer.kind == "linear" and not layer.x["functional"] and not layer.x["semi_structured"]:
        kind = "csr_linear"
    elif layer.kind == "conv" and layer.x["groups"] == 1 and not layer.x["conv1d"]:
        kind = "csr_conv"
    else:
        return None
    numel = weight.numel()
    if density is None:
        nnz = float(torch.count_nonzero(weight))
        pattern, row_cv = sparsity_pattern(weight)
    else:
        nnz = float(round(min(max(density, 0.0), 1.0) * numel))
        pattern, row_cv = PATTERNS.get(pattern, PATTERNS["unstructured"]), 0.0
    if nnz >= numel:
        return None
    features = _csr_features(kind, layer.x, nnz, weight.shape[0], pattern, row_cv, weight.element_size())
    return Layer(layer.name, kind, features, layer.weight)


def _csr_layer(name: str, kind: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> Layer:
    """Features of a CSR layer of an inference model (its dense shape rebuilt from the CSR buffers)."""
    csr = module.csr
    rows, cols = csr.shape
    nnz = float(csr.values.numel())
    counts = (csr.crow_indices[1:] - csr.crow_indices[:-1]).float()
    row_cv = float(counts.std(unbiased=False) / counts.mean().clamp_min(1e-9)) if rows > 1 else 0.0
    pattern = PATTERNS["rows"] if bool((counts == 0).any()) else PATTERNS["unstructured"]
    if kind == "csr_linear":
        m = x.numel() // max(cols, 1)
        base = {"m": m, "k": cols, "n": rows}
    else:
        kh, kw = module.kernel_size
        base = {
            "batch": x.shape[0], "cin": cols // (kh * kw), "cout": rows, "h": x.shape[-2], "w": x.shape[-1],
            "ho": out.shape[-2], "wo": out.shape[-1], "kh": kh, "kw": kw, "stride": float(module.stride[0]),
        }  # fmt: skip
    return Layer(name, kind, _csr_features(kind, base, nnz, rows, pattern, row_cv, _itemsize(x)), None)


def _rnn_layer(name: str, module: nn.RNNBase, x: Any) -> Layer:
    tensor = x.data if hasattr(x, "batch_sizes") else x
    if hasattr(x, "batch_sizes"):  # PackedSequence: steps x batch is the packed length
        steps, batch = int(x.batch_sizes.numel()), int(x.batch_sizes.max())
    elif tensor.dim() == 2:
        steps, batch = tensor.shape[0], 1
    elif module.batch_first:
        batch, steps = tensor.shape[0], tensor.shape[1]
    else:
        steps, batch = tensor.shape[0], tensor.shape[1]
    mode = module.mode
    gates, hidden, directions = GATES[mode], module.hidden_size, 2 if module.bidirectional else 1
    flops = 0.0
    for layer in range(module.num_layers):
        inputs = module.input_size if layer == 0 else hidden * directions
        flops += 2.0 * gates * hidden * (inputs + hidden) * steps * batch * directions
    size = _itemsize(tensor)
    weights = sum(p.numel() for p in module.parameters() if p.dim() > 0)
    moved = size * (weights + steps * batch * (module.input_size + hidden * directions * module.num_layers))
    features = {
        "cell": CELLS[mode], "gates": gates, "input": module.input_size, "hidden": hidden,
        "layers": module.num_layers, "directions": directions, "steps": steps, "batch": batch,
        "flops": flops, "bytes": float(moved),
    }  # fmt: skip
    return Layer(name, "rnn", features, None)


def _simple_layer(name: str, kind: str, op: str, x: torch.Tensor | None, out: torch.Tensor | None, inputs: int) -> Layer:
    n_in = 0 if x is None else x.numel()
    n_out = 0 if out is None else out.numel()
    size = 4 if x is None else _itemsize(x)
    moved = float(size * (n_in * max(inputs, 1) + n_out))
    if kind == "norm":
        channels = x.shape[1] if x is not None and x.dim() > 1 else 1
        return Layer(name, kind, {"op": op_index(op), "elements": n_in, "channels": channels, "bytes": moved})
    if kind == "pool":
        window = n_in / max(n_out, 1)
        return Layer(name, kind, {"op": op_index(op), "elements_in": n_in, "elements_out": n_out, "window": window,
                                  "bytes": moved})  # fmt: skip
    cls = op_class(op)
    features = {
        "op": op_index(op), "op_class": cls, "module": float(not op.startswith("fn:")), "elements_in": n_in,
        "elements_out": n_out, "inputs": inputs, "bytes": moved if cls else 0.0,
    }  # fmt: skip
    return Layer(name, kind, features)


class _Recorder(TorchFunctionMode):
    """Records the torch calls made outside known layers (residual adds, ``torch.flatten``, ``F.relu``...)."""

    def __init__(self, state: _TraceState) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.state.depth == 0 and self.state.active:
            self.state.functional(func, args, kwargs or {}, out)
        return out


class _TraceState:
    def __init__(self) -> None:
        self.depth = 0
        self.active = True
        self.layers: list[Layer] = []
        self.container_calls = 0
        self.peak = 0
        self.counter = 0
        self.fraction = 1.0  # kept fraction of the units of the last Linear/Conv, after shrinking

    def note_output(self, out: Any) -> None:
        tensor = _first_tensor(out)
        if tensor is not None:
            self.peak = max(self.peak, tensor.numel())

    def functional(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        raw = getattr(func, "__name__", "other")
        if raw in _IGNORED:
            return
        name = raw.strip("_")
        if name.startswith("i") and name[1:] in ("add", "mul", "sub", "div"):
            name = name[1:]
        name = name.rstrip("_")
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name in ("cat", "stack") and args and isinstance(args[0], (list, tuple)):
            tensors = [a for a in args[0] if isinstance(a, torch.Tensor)]
        result = _first_tensor(out)
        if not tensors and result is None:
            return
        self.counter += 1
        label = f"<fn:{name}#{self.counter}>"
        if name in ("linear", "matmul", "mm", "bmm", "addmm") and len(tensors) >= 2:
            a, b = (tensors[1], tensors[2]) if name == "addmm" and len(tensors) >= 3 else (tensors[0], tensors[1])
            k = a.shape[-1]
            n = b.shape[0] if name == "linear" else b.shape[-1]
            m = a.numel() // max(k, 1)
            if name == "bmm":
                m = a.numel() // max(k, 1)
            size = _itemsize(a)
            features = {
                "m": m, "k": k, "n": n, "bias": float(name in ("addmm",) or len(tensors) > 2), "functional": 1.0,
                "semi_structured": 0.0, "flops": 2.0 * m * k * n, "bytes": float(size * (m * k + k * n + m * n)),
            }  # fmt: skip
            self.layers.append(Layer(label, "linear", features))
        else:
            op = "fn:view" if name in _VIEWS else (f"fn:{name}" if f"fn:{name}" in _OP_INDEX else "fn:other")
            first = tensors[0] if tensors else None
            self.layers.append(_simple_layer(label, "elementwise", op, first, result, len(tensors)))
        self.note_output(out)


def trace(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    *,
    alternatives: bool = False,
    densities: Mapping[str, float] | None = None,
    pattern: str = "unstructured",
    shrink: Mapping[nn.Module, Kept] | None = None,
) -> Trace:
    """Run ``model`` once on zeros of ``(batch_size, *input_shape)`` and describe every executed layer.

    With ``alternatives``, each dense ``Linear``/``Conv2d`` with zeros in its weight (or a density
    below 1 in ``densities``, weight name -> nonzero fraction, of ``pattern``) also gets its CSR
    form as ``alt``. ``shrink`` (from :func:`nas.latency.shrinkage.shrink_plan`) describes layers
    as the converter's shrinking leaves them: fewer units, and the channel-wise layers after them
    on fewer channels. The model runs in eval mode without autograd (its mode is restored).
    :class:`UnsupportedLayer` names the first module the predictor has no model for.
    """
    leaves, containers = _leaves(model)
    state = _TraceState()
    prunable = _prunable_names(model)
    handles = []

    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        state.depth += 1

    def post(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        try:
            if state.depth == 1:  # not a layer called inside another layer
                describe(module, args, out)
        finally:
            state.depth -= 1  # only now: the torch calls describing the layer are not the model's

    def describe(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        path, kind = leaves[module]
        x = _first_tensor(args)
        y = _first_tensor(out)
        if kind in ("linear", "conv"):
            name = prunable.get(id(module), f"{path}.weight")
            kept = shrink.get(module) if shrink else None
            weight = _weight(module) if kept is None else kept.weight(_weight(module))
            rows, cols = weight.shape[0], weight.shape[1]
            if kind == "linear":
                layer = _linear_layer(path, module, x, name, *((cols, rows) if kept else (None, None)))
            else:
                layer = _conv_layer(path, module, x, y, name, *((cols * module.groups, rows) if kept else (None, None)))
            state.fraction = 1.0 if kept is None else kept.fraction
            if alternatives:
                density = densities.get(name) if densities else None
                layer.alt = csr_alternative(layer, weight, density, pattern)
            state.layers.append(layer)
        elif kind in ("csr_linear", "csr_conv"):
            state.layers.append(_csr_layer(path, kind, module, x, y))
        elif kind == "rnn":
            state.layers.append(_rnn_layer(path, module, args[0]))
        else:
            inputs = sum(isinstance(a, torch.Tensor) for a in args)
            layer = _simple_layer(path, kind, _module_op(module), x, y, inputs)
            if state.fraction != 1.0:  # after a shrunk layer: the same op on fewer channels
                for key in ("elements", "elements_in", "elements_out", "bytes", "channels"):
                    if key in layer.x:
                        layer.x[key] = max(1.0, round(layer.x[key] * state.fraction))
            state.layers.append(layer)
        if kind in ("csr_linear", "csr_conv", "rnn"):
            state.fraction = 1.0
        state.note_output(out)

    def container_pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        if state.depth == 0:
            state.container_calls += 1

    for module in leaves:
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    for module in containers:
        handles.append(module.register_forward_pre_hook(container_pre))
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), torch.float32)
    x = torch.zeros(batch_size, *input_shape, device=device, dtype=dtype)
    model.eval()
    try:
        with torch.no_grad(), parametrize.cached(), _Recorder(state):
            model(x)
    finally:
        state.active = False
        model.train(was_training)
        for handle in handles:
            handle.remove()
    params = sum(  # a masked weight's parameter is its parametrization's ``original``: counted once
        p.numel() for n, p in model.named_parameters() if "parametrizations" not in n.split(".") or n.endswith(".original")
    )
    return Trace(state.layers, state.container_calls, x.numel(), max(state.peak, x.numel()), params)


def _prunable_names(model: nn.Module) -> dict[int, str]:
    """``id(module) -> "path.weight"`` for every ``Linear``/``Conv2d``, as ``nas.sparse.masks`` names weights."""
    return {
        id(module): f"{path}.weight" if path else "weight"
        for path, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
    }
