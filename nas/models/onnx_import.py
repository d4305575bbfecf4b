"""A user's ONNX network, checked and converted to a trainable torch module.

An uploaded file is read with ``onnx`` and never executed as code: :func:`check_onnx` refuses
what the service will not take (too large, not ONNX, external data, a failed ``onnx.checker``, an
opset outside the range below, anything but one float input and one output, a tensor too large to
compute), and :func:`to_torch` builds a ``torch.fx.GraphModule`` over a closed set of operators
(:data:`SUPPORTED_OPERATORS`). An operator outside that set is refused by name, so the set is also
the safety boundary of what the service runs. :func:`compare_with_onnxruntime` then checks the
conversion against onnxruntime on random inputs.

The converter is written here rather than taken from ``onnx2torch``: onnx2torch imports
torchvision in its node converters, and no torchvision wheel runs beside the pinned CPU torch
("operator torchvision::nms does not exist"; the only one that does needs a 5.5 GB CUDA torch).
What it builds is what the sparsifiers need anyway: Conv, Gemm and MatMul with a constant weight
become real ``nn.Conv2d`` / ``nn.Linear`` holding the pretrained weights (found by
:func:`nas.sparse.masks.prunable_weights`, named after the ONNX initializers), BatchNormalization
becomes ``nn.BatchNorm2d``/``1d`` with its running statistics, Dropout ``nn.Dropout``; so the
converted network fine-tunes like any search space's model.

Opsets 13 to 23 of the default domain: at 13 Softmax/LogSoftmax became single-axis and
Squeeze/Unsqueeze/ReduceSum-style axes became inputs, the forms implemented here (and every exporter
of the last years writes 13 or later; torch.onnx.export writes 20 by default). Up to 23 every
operator of the set only gained tensor types or attributes handled here (Reshape ``allowzero`` 14,
Shape ``start``/``end`` 15, AveragePool ``dilations`` 19), and the installed onnxruntime runs them.
"""

from __future__ import annotations

import math
import operator
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, numpy_helper
from torch import fx, nn

from nas.safe_text import escape_controls

if TYPE_CHECKING:
    from nas.settings import Settings

OPSET_MIN = 13
OPSET_MAX = 23
# Largest input of one example (values), and largest tensor the graph may compute for one example
# (256 MiB of float32; a ResNet-50's largest activation at 224x224 is 0.8 M values): checking and
# converting a model then cannot allocate without bound.
MAX_INPUT_VALUES = 1 << 24
MAX_TENSOR_VALUES = 1 << 26
# Outputs of onnxruntime and of the converted module agree within atol + rtol * max|onnxruntime output|.
COMPARE_RTOL = 1e-3
COMPARE_ATOL = 1e-4

_DEFAULT_DOMAINS = ("", "ai.onnx")


class ModelRejected(ValueError):
    """An ONNX model the service does not take; the message names the failed check or the operator."""


@dataclass(frozen=True)
class ModelLimits:
    """What an uploaded model may be: its file size, its parameter count and its default-domain opset."""

    max_bytes: int
    max_params: int
    opset_min: int = OPSET_MIN
    opset_max: int = OPSET_MAX

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelLimits:
        return cls(max_bytes=settings.limit_model_bytes, max_params=settings.limit_model_params)


# ---------------------------------------------------------------------------------------------
# Checks


def check_onnx(data: bytes | Path, limits: ModelLimits) -> onnx.ModelProto:
    """The model in ``data`` (the file's bytes or its path), once every check passed; ``ModelRejected`` otherwise.

    The cheap checks come first (size, parse, external data, opset, parameter count), so a file
    refused by one of them never reaches the checker's full shape inference.
    """
    is_path = isinstance(data, (str, os.PathLike))
    size = Path(data).stat().st_size if is_path else len(data)
    if size > limits.max_bytes:
        raise ModelRejected(f"size limit: the file is {size} bytes, over the limit of {limits.max_bytes} bytes")
    raw = Path(data).read_bytes() if is_path else bytes(data)
    try:
        proto = onnx.load_model_from_string(raw)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelRejected(f"not an ONNX model: the file does not parse as an ONNX protobuf ({exc})") from None
    if not proto.HasField("graph") or proto.ir_version <= 0 or not proto.graph.node:
        raise ModelRejected("not an ONNX model: no IR version or no graph nodes")
    _check_no_external_data(proto)
    opset = default_opset(proto)
    if opset is None:
        raise ModelRejected("opset: the model imports no default-domain (ai.onnx) opset")
    if not limits.opset_min <= opset <= limits.opset_max:
        raise ModelRejected(
            f"opset {opset} is not supported: the default-domain opset must be {limits.opset_min} to {limits.opset_max}"
        )
    params = sum(math.prod(t.dims) for t in _tensors(proto))
    if params > limits.max_params:
        raise ModelRejected(f"parameter limit: the model holds {params} values, over the limit of {limits.max_params}")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise ModelRejected(f"ONNX checker failed: {_first_line(exc)}") from None
    _check_signature(proto)
    _check_tensor_sizes(proto)
    return proto


def default_opset(proto: onnx.ModelProto) -> int | None:
    """The version of the default (ai.onnx) operator set the model imports."""
    return next((o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS), None)


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: graph inputs that are not initializers (IR < 4 lists weights as inputs)."""
    weights = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in weights]


def input_shape(proto: onnx.ModelProto) -> tuple[int, ...]:
    """The shape of one example of the model's input, the batch dimension left out."""
    return tuple(d.dim_value for d in graph_inputs(proto)[0].type.tensor_type.shape.dim[1:])


def _first_line(exc: BaseException) -> str:
    """The start of an error's message, safe to show (it may quote names from the file)."""
    text = str(exc).strip() or type(exc).__name__
    return escape_controls(" ".join(text.split("\n")[:3])[:500])


def _shown(text: str, limit: int = 100) -> str:
    """A name from the file as a refusal shows it: control characters escaped, at most ``limit`` characters."""
    return escape_controls(text if len(text) <= limit else text[: limit - 3] + "...")


def _at(node: onnx.NodeProto) -> str:
    return f"operator {_shown(node.op_type)} at node {_shown(node.name) or '(unnamed)'}"


def _tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in the model: initializers and attribute values, in the graph, its
    subgraphs and the model's local functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _check_no_external_data(proto: onnx.ModelProto) -> None:
    for tensor in _tensors(proto):
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            where = {e.key: e.value for e in tensor.external_data}.get("location", "?")
            raise ModelRejected(
                f"external data: tensor {_shown(tensor.name)!r} refers to data outside the file ({_shown(where)}); "
                "save the model with all its weights inside (onnx.save(..., save_as_external_data=False))"
            )


def _check_signature(proto: onnx.ModelProto) -> None:
    inputs = graph_inputs(proto)
    if len(inputs) != 1:
        raise ModelRejected(f"inputs: the model has {len(inputs)} inputs ({', '.join(_shown(i.name) for i in inputs)}); it must have exactly one")
    if len(proto.graph.output) != 1:
        raise ModelRejected(f"outputs: the model has {len(proto.graph.output)} outputs; it must have exactly one")
    (value,) = inputs
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type" or value.type.tensor_type.elem_type != TensorProto.FLOAT:
        elem = TensorProto.DataType.Name(value.type.tensor_type.elem_type) if kind == "tensor_type" else kind
        raise ModelRejected(f"input {_shown(value.name)!r} is {elem}; it must be a float32 tensor")
    if not value.type.tensor_type.HasField("shape"):
        raise ModelRejected(f"input {_shown(value.name)!r} has no shape; it must be (N, features) or (N, C, H, W)")
    dims = list(value.type.tensor_type.shape.dim)
    shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in dims]
    if len(dims) not in (2, 4):
        raise ModelRejected(f"input {_shown(value.name)!r} has shape {shape}; it must be (N, features) or (N, C, H, W)")
    batch = dims[0]
    if batch.HasField("dim_value") and batch.dim_value != 1:
        raise ModelRejected(
            f"input {_shown(value.name)!r} has shape {shape}; its first dimension must be the batch (symbolic, e.g. 'N', or 1)"
        )
    if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims[1:]):
        raise ModelRejected(f"input {_shown(value.name)!r} has shape {shape}; every dimension but the batch must be a fixed size")
    values = math.prod(d.dim_value for d in dims[1:])
    if values > MAX_INPUT_VALUES:
        raise ModelRejected(f"input {_shown(value.name)!r} has {values} values per example, over the limit of {MAX_INPUT_VALUES}")


def _check_tensor_sizes(proto: onnx.ModelProto) -> None:
    """Refuse a graph whose inferred tensors (batch dimension 1) hold more than MAX_TENSOR_VALUES."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        if info.type.WhichOneof("value") != "tensor_type" or not info.type.tensor_type.HasField("shape"):
            continue
        values = math.prod(d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim)
        if values > MAX_TENSOR_VALUES:
            raise ModelRejected(
                f"tensor size: {_shown(info.name)!r} would hold {values} values per example, over the limit of {MAX_TENSOR_VALUES}"
            )


# ---------------------------------------------------------------------------------------------
# Runtime functions the converted graph calls. A value derived from a Shape node stays a Python
# list of ints (symbolic under torch.export), so shape arithmetic traces instead of reading tensors.


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple, int, torch.SymInt))


def _as_list(value: Any) -> Any:
    return value.tolist() if isinstance(value, torch.Tensor) else value


def _elementwise(fn: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    if not (_is_shape(a) or _is_shape(b)):
        return fn(a, b)
    a, b = _as_list(a), _as_list(b)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) == 1 or len(b) == 1:
            a, b = (a * len(b), b) if len(a) == 1 else (a, b * len(a))
        return [fn(x, y) for x, y in zip(a, b)]
    if isinstance(a, list):
        return [fn(x, b) for x in a]
    if isinstance(b, list):
        return [fn(a, y) for y in b]
    return fn(a, b)


def _int_div(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        tensor = a if isinstance(a, torch.Tensor) else b
        if tensor.dtype.is_floating_point:
            return torch.div(a, b)
        return torch.div(a, b, rounding_mode="trunc")
    if isinstance(a, float) or isinstance(b, float):
        return a / b
    quotient = abs(a) // abs(b)  # ONNX integer division truncates toward zero, exactly for any size
    return quotient if (a >= 0) == (b >= 0) else -quotient


def onnx_add(a: Any, b: Any) -> Any:
    return _elementwise(operator.add, a, b)


def onnx_sub(a: Any, b: Any) -> Any:
    return _elementwise(operator.sub, a, b)


def onnx_mul(a: Any, b: Any) -> Any:
    return _elementwise(operator.mul, a, b)


def onnx_div(a: Any, b: Any) -> Any:
    return _elementwise(_int_div, a, b)


def onnx_shape(x: torch.Tensor, start: int = 0, end: int | None = None) -> list[Any]:
    return list(x.shape[start:end])


def onnx_gather(data: Any, indices: Any, axis: int = 0) -> Any:
    if _is_shape(data):
        idx = _as_list(indices)
        return [data[i] for i in idx] if isinstance(idx, list) else data[idx]
    if not isinstance(indices, torch.Tensor):
        indices = torch.tensor(indices)
    axis = axis % data.dim()
    return data[(slice(None),) * axis + (indices.long(),)]


def onnx_unsqueeze(data: Any, axes: list[int]) -> Any:
    if _is_shape(data) and not isinstance(data, (list, tuple)):
        return [data]  # a scalar of a shape computation becomes a 1-element shape
    if _is_shape(data):
        raise ValueError("Unsqueeze of a shape list is not supported")
    rank = data.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        data = data.unsqueeze(axis)
    return data


def onnx_squeeze(data: Any, axes: list[int] | None = None) -> Any:
    if isinstance(data, (list, tuple)):
        return data[0] if len(data) == 1 else data
    if axes is None:
        return data.squeeze()
    return data.squeeze(tuple(a % data.dim() for a in axes))


def onnx_concat(*values: Any, axis: int = 0) -> Any:
    if any(_is_shape(v) for v in values):
        out: list[Any] = []
        for v in values:
            v = _as_list(v)
            out.extend(v if isinstance(v, (list, tuple)) else [v])
        return out
    return torch.cat(values, dim=axis)


def onnx_cast(x: Any, dtype: torch.dtype) -> Any:
    if _is_shape(x):
        return x if not dtype.is_floating_point else torch.tensor(x, dtype=dtype)
    return x.to(dtype)


def onnx_reshape(x: torch.Tensor, shape: Any, allowzero: int = 0) -> torch.Tensor:
    shape = list(_as_list(shape))
    if not allowzero:
        shape = [x.shape[i] if isinstance(s, int) and s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def onnx_flatten(x: torch.Tensor, axis: int) -> torch.Tensor:
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


def onnx_gemm(a: torch.Tensor, b: torch.Tensor, c: Any, alpha: float, beta: float, trans_a: int, trans_b: int) -> torch.Tensor:
    out = alpha * torch.matmul(a.t() if trans_a else a, b.t() if trans_b else b)
    return out if c is None else out + beta * c


def onnx_hard_sigmoid(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


def onnx_clip(x: torch.Tensor, low: Any = None, high: Any = None) -> torch.Tensor:
    return torch.clamp(x, low, high)


def onnx_reduce(x: torch.Tensor, how: str, axes: list[int] | None, keepdims: int) -> torch.Tensor:
    """``how`` is the tensor method: ``mean``, ``sum``, ``amax`` or ``amin``."""
    dims = tuple(range(x.dim())) if axes is None else tuple(axes)
    return getattr(x, how)(dim=dims, keepdim=bool(keepdims))


def onnx_pad(x: torch.Tensor, pads: list[int], mode: str, value: float, axes: list[int] | None) -> torch.Tensor:
    rank = x.dim()
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    begin, end = pads[: len(axes)], pads[len(axes) :]
    by_axis = {axis: (b, e) for axis, b, e in zip(axes, begin, end)}
    last = min(by_axis, default=rank)  # F.pad lists (begin, end) from the last dimension backwards
    flat: list[int] = []
    for axis in range(rank - 1, last - 1, -1):
        flat.extend(by_axis.get(axis, (0, 0)))
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return F.pad(x, flat, mode=torch_mode, value=value if torch_mode == "constant" else None)


def onnx_slice(data: Any, starts: Any, ends: Any, axes: list[int] | None, steps: list[int] | None) -> Any:
    starts, ends = ([v] if _is_shape(v) and not isinstance(v, (list, tuple)) else list(v) for v in (starts, ends))
    if isinstance(data, (list, tuple)):
        return list(data[slice(starts[0], ends[0], (steps or [1])[0])])
    rank = data.dim()
    axes = [a % rank for a in axes] if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step > 0:
            data = data[(slice(None),) * axis + (slice(start, end, step),)]
        else:  # torch tensors do not slice backwards: pick the indices Python's slicing would
            index = torch.tensor(range(*slice(start, end, step).indices(data.shape[axis])), dtype=torch.long)
            data = data.index_select(axis, index)
    return data


def onnx_split(x: torch.Tensor, sizes: list[int] | None, axis: int, parts: int) -> tuple[torch.Tensor, ...]:
    return torch.split(x, sizes if sizes is not None else -(-x.shape[axis] // parts), dim=axis)


def onnx_constant_of_shape(shape: Any, value: torch.Tensor) -> torch.Tensor:
    return torch.full(list(_as_list(shape)), value.item(), dtype=value.dtype)


def onnx_expand(x: torch.Tensor, shape: Any) -> torch.Tensor:
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_as_list(shape))))


def onnx_global_average_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def onnx_global_max_pool(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


_RUNTIME_FUNCTIONS = (
    onnx_add, onnx_sub, onnx_mul, onnx_div, onnx_shape, onnx_gather, onnx_unsqueeze, onnx_squeeze, onnx_concat,
    onnx_cast, onnx_reshape, onnx_flatten, onnx_gemm, onnx_hard_sigmoid, onnx_clip, onnx_reduce, onnx_pad,
    onnx_slice, onnx_split, onnx_constant_of_shape, onnx_expand, onnx_global_average_pool, onnx_global_max_pool,
)  # fmt: skip


class OnnxTracer(fx.Tracer):
    """Keeps the functions above as single calls when a converted module's code is traced again
    (unpickling a GraphModule does that), since shape arithmetic cannot run on proxies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, autowrap_functions=_RUNTIME_FUNCTIONS, **kwargs)


# ---------------------------------------------------------------------------------------------
# Conversion

_DTYPES = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}

_UNARY: dict[str, Callable[..., Any]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "HardSwish": F.hardswish,
    "Erf": torch.erf,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Neg": torch.neg,
    "Abs": torch.abs,
}
_BINARY: dict[str, Callable[..., Any]] = {
    "Add": onnx_add,
    "Sub": onnx_sub,
    "Mul": onnx_mul,
    "Div": onnx_div,
    "Pow": torch.pow,
    "MatMul": torch.matmul,
}

Value = Any  # an fx.Node (computed when the model runs) or a torch.Tensor / list (known at conversion)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _sanitize(name: str) -> str:
    text = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_")
    if not text or text[0].isdigit():
        text = f"m_{text}"
    return text


class _Converter:
    """One pass over the (topologically sorted) ONNX graph, emitting fx nodes and modules."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: dict[str, Value] = {}
        self.used_names: set[str] = set()
        self.buffers: dict[int, fx.Node] = {}
        self.shared: dict[tuple, str] = {}
        self.bias_free: dict[str, nn.Linear] = {}  # MatMul output -> its bias-less Linear (an Add may give it a bias)
        self.consumers: dict[str, int] = {}
        for node in proto.graph.node:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1
        for out in proto.graph.output:
            self.consumers[out.name] = self.consumers.get(out.name, 0) + 1
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
        self.shapes: dict[str, list[int | None]] = {}
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            t = info.type.tensor_type
            if info.type.WhichOneof("value") == "tensor_type" and t.HasField("shape"):
                self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]

    # -- values ---------------------------------------------------------------------------------

    def convert(self) -> fx.GraphModule:
        for init in self.proto.graph.initializer:
            self.env[init.name] = torch.from_numpy(numpy_helper.to_array(init).copy())
        (inp,) = graph_inputs(self.proto)
        self.env[inp.name] = self.graph.placeholder(self._unique(_sanitize(inp.name)))
        for node in self.proto.graph.node:
            handler = _HANDLERS.get(node.op_type) if node.domain in _DEFAULT_DOMAINS else None
            if handler is None:
                op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
                raise ModelRejected(
                    f"unsupported operator {_shown(op)} at node {_shown(node.name) or '(unnamed)'}; "
                    f"supported: {', '.join(SUPPORTED_OPERATORS)}"
                )
            try:
                outputs = handler(self, node, [self._get(n) for n in node.input], _attrs(node))
            except ModelRejected:
                raise
            except Exception as exc:
                raise ModelRejected(f"{_at(node)} cannot convert: {_first_line(exc)}") from None
            if not isinstance(outputs, tuple):
                outputs = (outputs,)
            for name, value in zip(node.output, outputs):
                self.env[name] = value
            for extra in node.output[len(outputs):]:
                if extra and self.consumers.get(extra):
                    raise ModelRejected(f"{_at(node)}: output {_shown(extra)!r} is not supported")
        result = self._node(self.env[self.proto.graph.output[0].name])
        self.graph.output(result)
        self.graph._tracer_cls = OnnxTracer
        module = fx.GraphModule(self.root, self.graph, class_name="OnnxModel")
        return module.eval()

    def _get(self, name: str) -> Value:
        return None if name == "" else self.env[name]

    def _unique(self, name: str) -> str:
        """``name``, or ``name_2``, ``name_3``...: not taken, and no attribute of a GraphModule (``graph``, ``forward``)."""
        base, n = name, 1
        while name in self.used_names or hasattr(fx.GraphModule, name):
            n += 1
            name = f"{base}_{n}"
        self.used_names.add(name)
        return name

    def _node(self, value: Value) -> Any:
        """``value`` as an fx argument: float constants become buffers of the module."""
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 and not value.dtype.is_floating_point:
                return value.item()
            if id(value) not in self.buffers:
                name = self._unique(f"const_{len(self.buffers)}")
                self.root.register_buffer(name, value)
                self.buffers[id(value)] = self.graph.get_attr(name)
            return self.buffers[id(value)]
        return value

    def call(self, fn: Callable[..., Any], *args: Value, **kwargs: Any) -> Value:
        """``fn(*args)`` now when every argument is known (constant folding), else a node of the graph."""
        if not any(isinstance(a, fx.Node) for a in args):
            return fn(*args, **kwargs)
        return self.graph.call_function(fn, tuple(self._node(a) for a in args), kwargs)

    def module(
        self, node: onnx.NodeProto, hint: str | None, make: Callable[[], nn.Module], x: fx.Node, shared: tuple | None = None
    ) -> fx.Node:
        """A module from ``make()`` applied to ``x``, named after ``hint`` (an initializer's name) or
        the node's name. Nodes with the same ``shared`` key (the same weight tensors and attributes)
        call one module, so weights tied in the ONNX graph stay tied when trained."""
        name = self.shared.get(shared) if shared is not None else None
        if name is None:
            name = self._unique(_module_name(hint, node))
            self.root.add_module(name, make())
            if shared is not None:
                self.shared[shared] = name
        return self.graph.call_module(name, (x,))

    def const(self, value: Value, node: onnx.NodeProto, what: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise ModelRejected(f"{_at(node)}: its {what} must be a constant")
        return value

    def shape_of(self, node: onnx.NodeProto, name: str) -> list[int | None]:
        shape = self.shapes.get(name)
        if shape is None:
            raise ModelRejected(f"{_at(node)}: the shape of its input is unknown")
        return shape


def _module_name(hint: str | None, node: onnx.NodeProto) -> str:
    """A module's name: its weight initializer's (``layers.0.conv1.weight`` -> ``layers_0_conv1``),
    or, where an exporter generated the weight's name (``onnx::Conv_123`` once BatchNorm was folded
    in), the torch module path in the node's scope name (``/layers/layers.0/conv1/Conv``, the same)."""
    if hint and not hint.startswith(("onnx::", "val_")) and not re.fullmatch(r"(const|_v)?_?\d+", hint):
        return _sanitize(re.sub(r"[._](weight|kernel|w)$", "", hint))
    parts = [p for p in node.name.split("/") if p]
    if parts and re.fullmatch(rf"{node.op_type}(_\d+)?", parts[-1]):
        parts.pop()
    path: list[str] = []
    for part in parts:  # a child of a Sequential is scoped "parent.index" after "parent"
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return _sanitize(".".join(path) or node.op_type.lower())


def _ints(value: Value) -> list[int]:
    return [int(v) for v in _as_list(value)] if isinstance(value, torch.Tensor) else list(value)


def _spatial_pads(conv: _Converter, node: onnx.NodeProto, a: dict[str, Any], kernel: list[int], dilations: list[int]) -> list[int]:
    """Explicit ONNX pads [top, left, bottom, right] of a 2-D convolution or pooling node."""
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        return list(a.get("pads", [0, 0, 0, 0]))
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    strides = a.get("strides", [1, 1])
    size = conv.shape_of(node, node.input[0])[2:]
    if any(s is None for s in size):
        raise ModelRejected(f"{_at(node)}: auto_pad {auto_pad} needs a known input size")
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        first = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begin.append(first)
        end.append(total - first)
    return begin + end


def _pad_input(conv: _Converter, x: Value, pads: list[int], value: float = 0.0) -> tuple[Value, tuple[int, int]]:
    """Symmetric pads go to the layer; asymmetric ones become an F.pad in front of it."""
    top, left, bottom, right = pads
    if top == bottom and left == right:
        return x, (top, left)
    return conv.call(F.pad, x, (left, right, top, bottom), value=value), (0, 0)


def _conv(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    weight = c.const(ins[1], node, "weight")
    if weight.dim() != 4:
        raise ModelRejected(f"{_at(node)}: only 2-D convolutions (4-D weights) are supported")
    bias = c.const(ins[2], node, "bias") if len(ins) > 2 and ins[2] is not None else None
    out_ch, per_group, kh, kw = weight.shape
    groups = a.get("group", 1)
    dilations = list(a.get("dilations", [1, 1]))
    pads = _spatial_pads(c, node, a, [kh, kw], dilations)
    x, padding = _pad_input(c, ins[0], pads)
    strides = tuple(a.get("strides", [1, 1]))

    def make() -> nn.Conv2d:
        layer = nn.Conv2d(
            per_group * groups, out_ch, (kh, kw), stride=strides, padding=padding, dilation=tuple(dilations),
            groups=groups, bias=bias is not None,
        )  # fmt: skip
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    shared = ("Conv", id(weight), id(bias), strides, padding, tuple(dilations), groups)
    return c.module(node, node.input[1], make, c._node(x), shared)


def _linear(
    c: _Converter, node: onnx.NodeProto, x: Value, weight: torch.Tensor, bias: torch.Tensor | None, shared: tuple | None
) -> fx.Node:
    def make() -> nn.Linear:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    return c.module(node, node.input[1], make, x, shared)


def _gemm(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    x, b = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    trans_a, trans_b = a.get("transA", 0), a.get("transB", 0)
    if isinstance(x, fx.Node) and isinstance(b, torch.Tensor) and not trans_a and (bias is None or isinstance(bias, torch.Tensor)):
        weight = (b if trans_b else b.t()) * alpha
        out_features = weight.shape[0]
        if bias is None or bias.numel() == 1 or (bias.numel() == out_features and bias.shape[-1] == out_features):
            vector = None if bias is None else (beta * bias).float().flatten().expand(out_features).clone()
            shared = ("Gemm", id(b), id(bias), alpha, beta, trans_b)
            return _linear(c, node, x, weight.contiguous(), vector, shared)
    return c.call(onnx_gemm, x, b, bias, alpha, beta, trans_a, trans_b)


def _matmul(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    x, b = ins
    if isinstance(x, fx.Node) and isinstance(b, torch.Tensor) and b.dim() == 2 and b.dtype.is_floating_point:
        out = _linear(c, node, x, b.t().contiguous(), None, None)  # not shared: an Add may give it a bias
        c.bias_free[node.output[0]] = c.root.get_submodule(str(out.target))
        return out
    return c.call(torch.matmul, x, b)


def _add(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    for i in (0, 1):
        layer, other = c.bias_free.get(node.input[i]), ins[1 - i]
        if (
            layer is not None and c.consumers.get(node.input[i]) == 1 and isinstance(other, torch.Tensor)
            and other.numel() == layer.out_features and other.shape[-1] == layer.out_features
        ):  # fmt: skip
            layer.bias = nn.Parameter(other.float().flatten().clone())
            del c.bias_free[node.input[i]]
            return ins[i]
    return c.call(onnx_add, *ins)


def _batch_norm(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    if a.get("training_mode", 0):
        raise ModelRejected(f"{_at(node)} is in training mode; export the model in eval mode")
    scale, shift, mean, var = (c.const(v, node, "parameters") for v in ins[1:5])
    rank = len(c.shape_of(node, node.input[0]))
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}.get(rank)
    if kind is None:
        raise ModelRejected(f"{_at(node)}: inputs of rank {rank} are not supported")

    def make() -> nn.Module:
        layer = kind(scale.numel(), eps=a.get("epsilon", 1e-5), momentum=1.0 - a.get("momentum", 0.9))
        with torch.no_grad():
            layer.weight.copy_(scale)
            layer.bias.copy_(shift)
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        return layer

    return c.module(node, node.input[1], make, c._node(ins[0]))


def _pool_args(c: _Converter, node: onnx.NodeProto, a: dict[str, Any]) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(a["kernel_shape"])
    if len(kernel) != 2:
        raise ModelRejected(f"{_at(node)}: only 2-D pooling is supported")
    dilations = list(a.get("dilations", [1, 1]))
    return kernel, list(a.get("strides", [1, 1])), _spatial_pads(c, node, a, kernel, dilations), dilations


def _max_pool(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    kernel, strides, pads, dilations = _pool_args(c, node, a)
    x, padding = ins[0], (pads[0], pads[1])
    if pads[:2] != pads[2:] or any(p > k // 2 for p, k in zip(padding, kernel)):
        x, padding = c.call(F.pad, x, (pads[1], pads[3], pads[0], pads[2]), value=-math.inf), (0, 0)
    return c.call(F.max_pool2d, x, tuple(kernel), tuple(strides), padding, tuple(dilations), bool(a.get("ceil_mode", 0)))


def _average_pool(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    kernel, strides, pads, dilations = _pool_args(c, node, a)
    if dilations != [1, 1]:
        raise ModelRejected(f"{_at(node)}: dilations are not supported")
    if pads[:2] != pads[2:] or any(p > k // 2 for p, k in zip(pads, kernel)):
        raise ModelRejected(f"{_at(node)}: asymmetric or over-half-kernel pads are not supported")
    return c.call(
        F.avg_pool2d, ins[0], tuple(kernel), tuple(strides), (pads[0], pads[1]), bool(a.get("ceil_mode", 0)),
        bool(a.get("count_include_pad", 0)),
    )  # fmt: skip


def _dropout(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    ratio = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("ratio", 0.5)
    if len(ins) > 2 and ins[2] is not None and bool(_as_list(c.const(ins[2], node, "training_mode"))):
        raise ModelRejected(f"{_at(node)} is in training mode; export the model in eval mode")
    p = float(_as_list(c.const(ratio, node, "ratio")) if isinstance(ratio, torch.Tensor) else ratio)
    return c.module(node, None, lambda: nn.Dropout(p), c._node(ins[0]))


def _constant(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    if "value" in a:
        return torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise ModelRejected(f"{_at(node)}: only tensor, float and int values are supported")


def _cast(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    dtype = _DTYPES.get(a["to"])
    if dtype is None:
        raise ModelRejected(f"{_at(node)}: casting to {TensorProto.DataType.Name(a['to'])} is not supported")
    return c.call(onnx_cast, ins[0], dtype=dtype)


def _reduce(how: str) -> Callable[[_Converter, onnx.NodeProto, list[Value], dict[str, Any]], Value]:
    def handler(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
        axes = _axes(c, node, ins, a)
        if not axes and a.get("noop_with_empty_axes", 0):
            return ins[0]
        return c.call(onnx_reduce, ins[0], how, list(axes) if axes else None, a.get("keepdims", 1))

    return handler


def _pad(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    value = ins[2] if len(ins) > 2 and ins[2] is not None else None
    value = 0.0 if value is None else float(c.const(value, node, "constant value").item())
    axes = _ints(c.const(ins[3], node, "axes")) if len(ins) > 3 and ins[3] is not None else None
    return c.call(onnx_pad, ins[0], _ints(c.const(ins[1], node, "pads")), mode, value, axes)


def _slice(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    # starts and ends may come from shape arithmetic (torch.chunk exports so); axes and steps are constant
    starts, ends = (_as_list(v) for v in ins[1:3])
    axes, steps = (
        _ints(c.const(ins[i], node, what)) if len(ins) > i and ins[i] is not None else None
        for i, what in ((3, "axes"), (4, "steps"))
    )
    return c.call(onnx_slice, ins[0], starts, ends, axes, steps)


def _split(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    sizes = a.get("split")
    if len(ins) > 1 and ins[1] is not None:
        sizes = _ints(c.const(ins[1], node, "split"))
    parts = a.get("num_outputs", len(node.output))
    result = c.call(onnx_split, ins[0], list(sizes) if sizes else None, a.get("axis", 0), parts)
    if isinstance(result, fx.Node):
        return tuple(c.graph.call_function(operator.getitem, (result, i)) for i in range(len(node.output)))
    return tuple(result)


def _constant_of_shape(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    value = torch.from_numpy(numpy_helper.to_array(a["value"]).copy()) if "value" in a else torch.tensor([0.0])
    return c.call(onnx_constant_of_shape, ins[0], value.flatten())


def _clip(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> Value:
    bounds = [float(c.const(v, node, "bounds").item()) if v is not None else None for v in (ins[1:] + [None, None])[:2]]
    if bounds == [0.0, 6.0]:
        return c.call(F.relu6, ins[0])
    return c.call(onnx_clip, ins[0], *bounds)


def _axes(c: _Converter, node: onnx.NodeProto, ins: list[Value], a: dict[str, Any]) -> list[int] | None:
    if len(ins) > 1 and ins[1] is not None:
        return _ints(c.const(ins[1], node, "axes"))
    return a.get("axes")


_HANDLERS: dict[str, Callable[[_Converter, onnx.NodeProto, list[Value], dict[str, Any]], Value]] = {
    **{op: (lambda fn: lambda c, n, i, a: c.call(fn, i[0]))(fn) for op, fn in _UNARY.items()},
    **{op: (lambda fn: lambda c, n, i, a: c.call(fn, i[0], i[1]))(fn) for op, fn in _BINARY.items()},
    "Add": _add,
    "MatMul": _matmul,
    "Conv": _conv,
    "Gemm": _gemm,
    "BatchNormalization": _batch_norm,
    "LeakyRelu": lambda c, n, i, a: c.call(F.leaky_relu, i[0], a.get("alpha", 0.01)),
    "HardSigmoid": lambda c, n, i, a: c.call(onnx_hard_sigmoid, i[0], a.get("alpha", 0.2), a.get("beta", 0.5)),
    "Gelu": lambda c, n, i, a: c.call(F.gelu, i[0], approximate=(a.get("approximate", b"none") or b"none").decode()),
    "Clip": _clip,
    "Softmax": lambda c, n, i, a: c.call(torch.softmax, i[0], a.get("axis", -1)),
    "LogSoftmax": lambda c, n, i, a: c.call(torch.log_softmax, i[0], a.get("axis", -1)),
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": lambda c, n, i, a: c.call(onnx_global_average_pool, i[0]),
    "GlobalMaxPool": lambda c, n, i, a: c.call(onnx_global_max_pool, i[0]),
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "ReduceMax": _reduce("amax"),
    "ReduceMin": _reduce("amin"),
    "Pad": _pad,
    "Slice": _slice,
    "Split": _split,
    "ConstantOfShape": _constant_of_shape,
    "Expand": lambda c, n, i, a: c.call(onnx_expand, i[0], _as_list(i[1])),
    "Flatten": lambda c, n, i, a: (
        c.call(torch.flatten, i[0], 1) if a.get("axis", 1) == 1 else c.call(onnx_flatten, i[0], a.get("axis", 1))
    ),
    "Reshape": lambda c, n, i, a: c.call(onnx_reshape, i[0], _as_list(i[1]), a.get("allowzero", 0)),
    "Transpose": lambda c, n, i, a: c.call(
        torch.permute, i[0], tuple(a["perm"]) if "perm" in a else tuple(reversed(range(len(c.shape_of(n, n.input[0])))))
    ),
    "Concat": lambda c, n, i, a: c.call(onnx_concat, *i, axis=a["axis"]),
    "Identity": lambda c, n, i, a: i[0],
    "Dropout": _dropout,
    "Constant": _constant,
    "Shape": lambda c, n, i, a: c.call(onnx_shape, i[0], a.get("start", 0), a.get("end")),
    "Gather": lambda c, n, i, a: c.call(onnx_gather, i[0], _as_list(i[1]), a.get("axis", 0)),
    "Unsqueeze": lambda c, n, i, a: c.call(onnx_unsqueeze, i[0], _axes(c, n, i, a)),
    "Squeeze": lambda c, n, i, a: c.call(onnx_squeeze, i[0], _axes(c, n, i, a)),
    "Cast": _cast,
}

SUPPORTED_OPERATORS: tuple[str, ...] = tuple(sorted(_HANDLERS))


def to_torch(proto: onnx.ModelProto) -> fx.GraphModule:
    """The network of a checked ``proto`` as a torch module with its pretrained weights, in eval mode."""
    if proto.graph.sparse_initializer:
        raise ModelRejected(f"sparse initializers are not supported ({_shown(proto.graph.sparse_initializer[0].values.name)!r})")
    try:
        return _Converter(proto).convert()
    except ModelRejected:
        raise
    except Exception as exc:  # a graph the checks let through but the converter cannot build
        raise ModelRejected(f"conversion failed: {_first_line(exc)}") from None


def compare_with_onnxruntime(
    proto: onnx.ModelProto,
    module: nn.Module,
    input_shape: tuple[int, ...],
    *,
    samples: int = 3,
    seed: int = 0,
    rtol: float = COMPARE_RTOL,
    atol: float = COMPARE_ATOL,
) -> float:
    """The largest absolute difference between onnxruntime's and ``module``'s outputs on seeded random inputs.

    ``input_shape`` is one example's shape. Both compute in float32 with different kernels and
    summation orders, so results differ by rounding: a few float32 epsilons (1.2e-7) per
    accumulation, compounded over depth, stays orders of magnitude below ``rtol`` (1e-3) of the
    output's scale, while a converter mistake (a lost bias, wrong pads, a transposed weight) moves
    outputs by a sizeable fraction of it. ``ModelRejected`` names the largest difference beyond
    ``atol + rtol * max|onnxruntime output|``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures come back as exceptions, named in the refusal
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelRejected(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
    batch_dim = graph_inputs(proto)[0].type.tensor_type.shape.dim[0]
    batch = 1 if batch_dim.HasField("dim_value") else 2
    rng = np.random.default_rng(seed)
    worst = 0.0
    was_training = module.training
    module.eval()
    try:
        for sample in range(samples):
            x = rng.standard_normal((batch, *input_shape), dtype=np.float32)
            worst = max(worst, _compare_once(session, module, x, f"random input {sample}", rtol, atol))
    finally:
        module.train(was_training)
    return worst


def _compare_once(session: Any, module: nn.Module, x: np.ndarray, which: str, rtol: float, atol: float) -> float:
    """The largest absolute difference on one input ``x``; ``ModelRejected`` beyond tolerance."""
    try:
        (expected,) = session.run(None, {session.get_inputs()[0].name: x})
    except Exception as exc:
        raise ModelRejected(f"onnxruntime cannot run the model on a {list(x.shape)} input: {_first_line(exc)}") from None
    try:
        with torch.no_grad():
            got = module(torch.from_numpy(x)).numpy()
    except Exception as exc:
        raise ModelRejected(f"the converted module fails on a {list(x.shape)} input: {_first_line(exc)}") from None
    if got.shape != expected.shape:
        raise ModelRejected(f"onnxruntime comparison: output shape {list(got.shape)} differs from onnxruntime's {list(expected.shape)}")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    largest = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(largest):
        raise ModelRejected(f"onnxruntime comparison: non-finite outputs on {which}")
    tolerance = atol + rtol * float(np.abs(expected).max(initial=0.0))
    if largest > tolerance:
        raise ModelRejected(
            f"onnxruntime comparison: outputs differ by up to {largest:.3g} (tolerance {tolerance:.3g}) on {which}"
        )
    return largest


def load_onnx_model(data: bytes | Path, limits: ModelLimits | None = None) -> nn.Module:
    """Check and convert a stored model for training; the comparison with onnxruntime ran at upload.

    ``limits`` default to the server's settings (``NAS_LIMIT_MODEL_*``).
    """
    if limits is None:
        from nas.settings import Settings

        limits = ModelLimits.from_settings(Settings.from_env())
    return to_torch(check_onnx(data, limits))
