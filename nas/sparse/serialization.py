"""A trained masked model as safetensors bytes: the effective weights plus each layer's mask.

The file holds plain ``state_dict`` names (``fc0.weight``, ``fc0.bias``), with masked weights as
the forward pass sees them and ``<layer>.weight_mask`` beside them, so any safetensors reader
gets a usable dense-with-zeros model, and :func:`load_model` restores the masks exactly.
"""

from __future__ import annotations

import json
import struct

import safetensors.torch
from torch import nn

from nas.sparse.masks import masks, set_mask

_MASK_SUFFIX = "weight_mask"


def _key(layer: str, attr: str) -> str:
    return f"{layer}.{attr}" if layer else attr


def _is_parametrization_key(key: str) -> bool:
    return "parametrizations" in key.split(".")


def save_model(model: nn.Module, metadata: dict[str, str]) -> bytes:
    """Safetensors bytes of ``model`` (masked weights and masks) with string ``metadata``."""
    tensors = {k: v for k, v in model.state_dict().items() if not _is_parametrization_key(k)}
    for name, mask in masks(model).items():
        tensors[_key(name, "weight")] = model.get_submodule(name).weight.detach()
        tensors[_key(name, _MASK_SUFFIX)] = mask.bool()
    return safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def load_model(model: nn.Module, data: bytes) -> None:
    """Load bytes from :func:`save_model` into a freshly built ``model`` of the same architecture.

    Raises ``ValueError`` if the file's tensors do not match the model's.
    """
    tensors = safetensors.torch.load(data)
    for mask_key in [k for k in tensors if k.rpartition(".")[2] == _MASK_SUFFIX]:
        layer_name = mask_key.rpartition(".")[0]
        try:
            layer = model.get_submodule(layer_name)
        except AttributeError:
            raise ValueError(f"model file masks {layer_name!r}, which the model does not have") from None
        weight_key = _key(layer_name, "weight")
        if weight_key not in tensors:
            raise ValueError(f"model file has {mask_key!r} but no {weight_key!r}")
        set_mask(layer, tensors.pop(mask_key))
        # Under a mask the stored weight is the parametrization's original.
        tensors[_key(layer_name, "parametrizations.weight.original")] = tensors.pop(weight_key)
    mask_buffers = {k for k in model.state_dict() if _is_parametrization_key(k) and not k.endswith(".original")}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = sorted(set(missing) - mask_buffers)
    if missing or unexpected:
        raise ValueError(f"model file does not fit the model: missing {missing}, unexpected {sorted(unexpected)}")


def read_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of safetensors bytes, read from the header without loading tensors."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if len(data) < 8 + header_len:
        raise ValueError("not a safetensors file: header runs past the end")
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {})

