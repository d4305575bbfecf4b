"""Inference layers that multiply by a ``torch.sparse`` CSR weight (MKL sparse BLAS on CPU).

The weight is kept as three dense buffers (``crow_indices``, ``col_indices``, ``values``), so
these layers deep-copy, pickle, move with ``.to()`` and save their ``state_dict`` to safetensors
like any other module (a CSR tensor buffer does none of that); the CSR tensor viewing those
buffers is built on first use and cached, since building it costs as much as a small product.

The CSR product reads a row-major dense operand of shape ``(in_features, batch)``, so these layers
work on transposed activations and hand back a transposed *view*: a following CSR layer then
transposes it back for free, and dense layers and element-wise ops accept the view as it is.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


BAG_MIN_COLUMNS = 32
"""Columns from which embedding_bag beats MKL's CSR product (the latency predictor's features read it too).

On the 2-core AMD EPYC (Zen 3, one thread) MKL wins below ~24 columns and embedding_bag is 2-3x
faster from 32 on (a 300x784 weight at 95%: 72 vs 30 µs at 64 columns, 302 vs 147 µs at 256).
"""


class _CSRWeight(nn.Module):
    """A 2-D weight (and its bias) in CSR form as plain buffers; :meth:`times` multiplies by it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        with warnings.catch_warnings():  # torch warns that CSR is "in beta state", in every worker's log
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            csr = weight.detach().to_sparse_csr()
        self.shape = tuple(weight.shape)
        # int32 indices are what MKL's LP64 interface takes; int64 ones would be converted on every call
        self.register_buffer("crow_indices", csr.crow_indices().int())
        self.register_buffer("col_indices", csr.col_indices().int())
        self.register_buffer("values", csr.values())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._csr: torch.Tensor | None = None

    def matrix(self) -> torch.Tensor:
        """The weight as a CSR tensor viewing the buffers (no copy); torch's beta warning was silenced in __init__."""
        if self._csr is None:
            self._csr = torch.sparse_csr_tensor(
                self.crow_indices, self.col_indices, self.values, self.shape, check_invariants=False
            )
        return self._csr

    def times(self, columns: torch.Tensor) -> torch.Tensor:
        """``weight @ columns + bias[:, None]`` for dense ``columns`` of shape ``(in, n)``.

        Row r of the product is the sum of the input rows ``columns[col_indices[k]]`` weighted by
        ``values[k]`` over row r's entries: from ``BAG_MIN_COLUMNS`` columns on, that runs as
        ``embedding_bag`` (FBGEMM's JIT-compiled weighted sum over the same CSR arrays), otherwise
        as ``torch.sparse`` CSR times dense (MKL).
        """
        if columns.shape[1] == 1:
            return self.times_vector(columns.view(-1)).unsqueeze(1)
        columns = columns.contiguous()  # both read a row-major (in, n); a no-op on a previous CSR layer's output
        if columns.shape[1] >= BAG_MIN_COLUMNS:
            product = F.embedding_bag(
                self.col_indices, columns, self.crow_indices, mode="sum", per_sample_weights=self.values,
                include_last_offset=True,
            )  # fmt: skip
            return product if self.bias is None else product.add_(self.bias.unsqueeze(1))
        if self.bias is None:
            return torch.sparse.mm(self.matrix(), columns)
        return torch.addmm(self.bias.unsqueeze(1), self.matrix(), columns)

    def times_vector(self, vector: torch.Tensor) -> torch.Tensor:
        """``weight @ vector + bias``: MKL's sparse matrix-vector product, cheaper than a one-column product."""
        if self.bias is None:
            return torch.mv(self.matrix(), vector)
        return torch.addmv(self.bias, self.matrix(), vector)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> _CSRWeight:
        self._csr = None  # .to(), .float() ... replace the buffers the view points at
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_csr": None}  # copies and pickles rebuild the view from their own buffers

    def extra_repr(self) -> str:
        return f"nnz={self.values.numel()}"


class CSRLinear(nn.Module):
    """``nn.Linear`` with its weight stored as sparse CSR; inputs of any leading shape, like ``nn.Linear``."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.csr = _CSRWeight(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0] == 1:  # batch 1, the common latency case: fewest Python-level ops
            return self.csr.times_vector(x[0]).unsqueeze(0)
        rows = x.reshape(-1, self.in_features)
        return self.csr.times(rows.t()).t().reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class CSRConv2d(nn.Module):
    """``nn.Conv2d`` (one group, zero padding) as im2col (``F.unfold``) times a CSR weight ``(out, in*kh*kw)``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not supports_csr_conv(conv):
            raise ValueError("CSRConv2d needs a Conv2d with groups=1, padding_mode='zeros' and numeric padding")
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = conv.padding
        self.csr = _CSRWeight(conv.weight.flatten(1), conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        geometry = zip(x.shape[-2:], self.padding, self.dilation, self.kernel_size, self.stride)
        height, width = ((size + 2 * pad - dil * (k - 1) - 1) // stride + 1 for size, pad, dil, k, stride in geometry)
        patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (batch, in*kh*kw, h*w)
        columns = patches.transpose(0, 1).reshape(patches.shape[1], -1)  # (in*kh*kw, batch*h*w); a view at batch 1
        return self.csr.times(columns).view(self.out_channels, batch, height, width).transpose(0, 1)

    def extra_repr(self) -> str:
        return (
            f"out_channels={self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}"
        )


def supports_csr_conv(conv: nn.Conv2d) -> bool:
    """Whether :class:`CSRConv2d` computes ``conv`` exactly: im2col covers one group and zero padding only."""
    return conv.groups == 1 and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)


def csr_layer(layer: nn.Module) -> nn.Module | None:
    """The CSR version of a ``Linear`` or supported ``Conv2d``, else ``None``."""
    if isinstance(layer, nn.Linear):
        return CSRLinear(layer)
    if isinstance(layer, nn.Conv2d) and supports_csr_conv(layer):
        return CSRConv2d(layer)
    return None


def dense_layer(layer: CSRLinear | CSRConv2d) -> nn.Module:
    """The plain ``Linear`` or ``Conv2d`` a CSR layer computes, its zeros stored: the inverse of :func:`csr_layer`.

    For formats with no unstructured-sparse kernel of their own (ONNX), and to rebuild a CSR layer
    from its stored arrays.
    """
    csr = layer.csr
    weight = csr.matrix().to_dense()
    bias = csr.bias is not None
    if isinstance(layer, CSRLinear):
        dense: nn.Module = nn.Linear(layer.in_features, layer.out_features, bias=bias, dtype=weight.dtype)
    else:
        kh, kw = layer.kernel_size
        dense = nn.Conv2d(
            csr.shape[1] // (kh * kw), layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, bias=bias, dtype=weight.dtype,
        )  # fmt: skip
        weight = weight.view(dense.weight.shape)
    with torch.no_grad():
        dense.weight.copy_(weight)
        if bias:
            dense.bias.copy_(csr.bias)
    return dense.eval().requires_grad_(False)
