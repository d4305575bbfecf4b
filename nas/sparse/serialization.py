"""A trained masked model as safetensors bytes: the effective weights plus each weight's mask.

The file holds plain ``state_dict`` names (``fc0.weight``, ``fc0.bias``, ``rnn.weight_hh_l0``),
with parametrized weights as the forward pass sees them and ``<weight name>_mask`` beside each
masked one (``fc0.weight_mask``, ``rnn.weight_hh_l0_mask``), so any safetensors reader gets a
usable dense-with-zeros model, and :func:`load_model` restores the masks exactly, as hard
``WeightMask`` parametrizations. Method-specific parametrization state (e.g. scores) is not kept:
the saved model is the final masked network.
"""

from __future__ import annotations

import json
import struct

import safetensors.torch
from torch import nn
from torch.nn.utils import parametrize

from nas.sparse.masks import masks, prunable_weights, set_mask

_MASK_SUFFIX = "_mask"


def _is_parametrization_key(key: str) -> bool:
    return "parametrizations" in key.split(".")


def save_model(model: nn.Module, metadata: dict[str, str]) -> bytes:
    """Safetensors bytes of ``model`` (effective weights and masks) with string ``metadata``."""
    tensors = {k: v for k, v in model.state_dict().items() if not _is_parametrization_key(k)}
    for prefix, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for attr in module.parametrizations:
                tensors[f"{prefix}.{attr}" if prefix else attr] = getattr(module, attr).detach()
    for name, mask in masks(model).items():
        tensors[name + _MASK_SUFFIX] = mask.bool()
    return safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def load_model(model: nn.Module, data: bytes) -> None:
    """Load bytes from :func:`save_model` into a freshly built ``model`` of the same architecture.

    Raises ``ValueError`` if the file's tensors do not match the model's.
    """
    tensors = safetensors.torch.load(data)
    weights = prunable_weights(model)
    masked = sorted(name for k in tensors if k.endswith(_MASK_SUFFIX) and (name := k.removesuffix(_MASK_SUFFIX)) in tensors)
    unknown = [name for name in masked if name not in weights]
    if unknown:
        raise ValueError(f"model file masks {unknown}, which the model does not have as prunable weights")
    for name in masked:
        module, attr = weights[name]
        set_mask(module, attr, tensors.pop(name + _MASK_SUFFIX))
        # Under a mask the stored weight is the parametrization's original.
        prefix = name.removesuffix(attr)
        tensors[f"{prefix}parametrizations.{attr}.original"] = tensors.pop(name)
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
