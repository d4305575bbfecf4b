"""Architectures are flat JSON-able dicts sampled from a search space (``ArchSpec``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

ArchSpec = dict[str, Any]


def fingerprint(arch: ArchSpec) -> str:
    """A stable hash of an architecture, equal for equal samples whatever their key order."""
    canonical = json.dumps(arch, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
