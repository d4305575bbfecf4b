"""The sparse inference model as one safetensors file that torch loads without running code from it.

:func:`nas.sparse.inference.to_inference` changes a trained network in three ways only: it removes
units (smaller ``Linear``/``Conv2d`` layers and ``BatchNorm``), and it swaps layers for
:mod:`nas.sparse.csr` layers. So the file holds

* every tensor of the inference model's ``state_dict`` under its plain name; a CSR layer's weight
  is its three arrays ``<layer>.csr.crow_indices``, ``<layer>.csr.col_indices`` (int32) and
  ``<layer>.csr.values``, with its bias as ``<layer>.csr.bias``;
* string metadata: the trained model's own (``search_space``, ``arch``, ``input_shape`` ...: what
  builds the network), ``format`` (:data:`FORMAT`), ``kernels`` (JSON: weight name -> ``dense``,
  ``shrunk`` or ``csr``) and ``modules`` (JSON: one entry per ``Linear``, ``Conv2d`` and
  ``BatchNorm`` of the inference model: ``path``, ``type``, the constructor arguments in
  ``config``, and ``csr`` when it runs as a CSR product).

:func:`load_into` rebuilds it on a freshly built network: only the module types above are ever
constructed, from the JSON, and the tensors are read by safetensors; nothing is unpickled.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import safetensors.torch
import torch
from torch import nn

from nas.sparse.csr import CSRConv2d, CSRLinear, csr_layer, dense_layer
from nas.sparse.inference import plain_copy
from nas.sparse.serialization import read_metadata

FORMAT = "sparse-nas-inference/1"
"""The ``format`` metadata of an inference file; a file of another format is refused."""

_CONFIG: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "Conv2d": (
        nn.Conv2d,
        ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode"),
    ),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
}


def save_inference_model(model: nn.Module, metadata: dict[str, str], kernels: dict[str, str]) -> bytes:
    """Safetensors bytes of an inference model (from ``to_inference``) with the network's ``metadata``."""
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    described = {
        **metadata,
        "format": FORMAT,
        "kernels": json.dumps(kernels, sort_keys=True),
        "modules": json.dumps(describe_modules(model)),
    }
    return safetensors.torch.save(tensors, metadata=described)


def describe_modules(model: nn.Module) -> list[dict[str, Any]]:
    """Each ``Linear``, ``Conv2d``, ``BatchNorm`` and CSR layer of ``model``: its path, type and constructor arguments."""
    entries = []
    for path, module in model.named_modules():
        csr = isinstance(module, (CSRLinear, CSRConv2d))
        plain = dense_layer(module) if csr else module
        name = type(plain).__name__
        if type(plain) is not _CONFIG.get(name, (None,))[0]:
            continue
        config = {key: _config_value(plain, key) for key in _CONFIG[name][1]}
        entries.append({"path": path, "type": name, "config": config, "csr": csr})
    return entries


def _config_value(module: nn.Module, key: str) -> Any:
    if key == "bias":
        return module.bias is not None
    value = getattr(module, key)
    return list(value) if isinstance(value, tuple) else value


def load_into(network: nn.Module, data: bytes) -> nn.Module:
    """The inference model stored in ``data``, rebuilt on ``network`` (the trained model's architecture,
    freshly built; not changed). Raises ``ValueError`` when the file does not fit it."""
    meta = read_metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a sparse-nas inference file: format {meta.get('format')!r}, expected {FORMAT!r}")
    tensors = safetensors.torch.load(data)
    model = plain_copy(network).eval()
    try:
        for entry in json.loads(meta["modules"]):
            model = _placed(model, entry["path"], _module(entry, tensors))
        model.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise ValueError(f"the inference file does not fit the network: {exc}") from exc
    return model.eval().requires_grad_(False)


def _module(entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """One described module, built from its JSON config; a CSR layer from its stored arrays."""
    cls, keys = _CONFIG[entry["type"]]
    config = entry["config"]
    if set(config) != set(keys):
        raise ValueError(f"module {entry['path']!r}: config {sorted(config)}, expected {sorted(keys)}")
    prefix = f"{entry['path']}." if entry["path"] else ""
    if not entry["csr"]:
        return _built(cls, config, prefix, tensors)
    crow, col, values = (tensors[f"{prefix}csr.{k}"] for k in ("crow_indices", "col_indices", "values"))
    dense = _built(cls, config, None, tensors)
    rows, columns = dense.weight.shape[0], dense.weight[0].numel()
    with warnings.catch_warnings(), torch.no_grad():  # torch's "CSR is in beta state", as in nas.sparse.csr
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        weight = torch.sparse_csr_tensor(crow.long(), col.long(), values, (rows, columns), check_invariants=True)
        dense.weight.copy_(weight.to_dense().view(dense.weight.shape))
        if dense.bias is not None:
            dense.bias.copy_(tensors[f"{prefix}csr.bias"])
    return _checked(csr_layer(dense), entry["path"])


def _built(cls: type[nn.Module], config: dict[str, Any], prefix: str | None, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """``cls(**config)``; with ``prefix``, only once its weight's shape is checked against the file's."""
    args = dict(config)
    if prefix is not None and cls in (nn.Linear, nn.Conv2d):
        stored = tuple(tensors[f"{prefix}weight"].shape)
        expected = _weight_shape(cls, args)
        if stored != expected:
            raise ValueError(f"{prefix}weight is {list(stored)} in the file, the module config says {list(expected)}")
    if cls is nn.Conv2d:
        args["padding"] = args["padding"] if isinstance(args["padding"], str) else tuple(args["padding"])
    return cls(**args).eval()


def _weight_shape(cls: type[nn.Module], config: dict[str, Any]) -> tuple[int, ...]:
    if cls is nn.Linear:
        return (config["out_features"], config["in_features"])
    return (config["out_channels"], config["in_channels"] // config["groups"], *config["kernel_size"])


def _checked(layer: nn.Module | None, path: str) -> nn.Module:
    if layer is None:
        raise ValueError(f"module {path!r} is marked csr but is not a layer that runs as CSR")
    return layer


def _placed(root: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """``root`` with ``module`` at ``path`` (``module`` itself at the root's path ``""``)."""
    if not path:
        return module
    root.get_submodule(path)  # raises when the network has no such module
    root.set_submodule(path, module)
    return root

