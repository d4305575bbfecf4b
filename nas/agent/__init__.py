"""The measurement agent: ``nas agent`` runs on a user's device and times models for the service.

The agent always calls out (the service never connects to a device): it registers its target and
hardware, long-polls for a leased measurement task, downloads the model as ONNX, times it with the
service's own protocol (:mod:`nas.timing.protocol`) under one of the runtimes it offers, and puts
the statistics back. Its only dependencies are httpx, numpy and the runtime it measures with; torch
is imported only for the ``torch`` and ``torch-cuda`` runtimes. See docs/agents.md.
"""

from __future__ import annotations
