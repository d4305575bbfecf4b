"""schemathesis hooks for tests/test_schemathesis.py: its ``positive_data_acceptance`` check, except
for the 422s named in :data:`EXPLAINED`, each a refusal that no JSON Schema can state.

Loaded by the schemathesis process (``SCHEMATHESIS_HOOKS``); the built-in check is switched off
there, so every other schema-valid request the server refuses still fails the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import positive_data_acceptance

Detail = Any  # a 422's ``detail``: a message, or a list of {loc, msg, type} errors


def _cursor(detail: Detail) -> bool:
    return isinstance(detail, str) and detail.startswith("invalid cursor")


def _each(accepts: Callable[[dict[str, Any]], bool]) -> Callable[[Detail], bool]:
    return lambda detail: isinstance(detail, list) and bool(detail) and all(accepts(e) for e in detail)


def _spec_problem(error: dict[str, Any]) -> bool:
    loc, kind = error.get("loc", []), str(error.get("type", ""))
    return (
        kind.endswith("_incompatible")
        or kind in ("dataset_unknown", "target_unknown", "constraint_impossible", "limit_exceeded")
        or loc[2:3] == ["params"] or "files missing" in str(error.get("msg", ""))
        or loc == ["body", "objectives"] and str(error.get("msg", "")).startswith("objectives repeat a metric")
    )  # fmt: skip


def _network_problem(error: dict[str, Any]) -> bool:
    loc = error.get("loc", [])
    return loc == ["body"] or loc[:2] in (["body", "layers"], ["body", "architecture"]) or error.get("type") == "limit_exceeded"


# (method, path) -> (why a schema-valid request may be refused, how its 422 is recognised)
EXPLAINED: dict[tuple[str, str], tuple[str, Callable[[Detail], bool]]] = {
    **{
        ("GET", path): ("a cursor is a token the server signed (nas.signing): one of the documented shape that "
                        "it never handed out is refused, which is its purpose", _cursor)
        for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}/trials", "/api/v1/dashboard/jobs", "/api/v1/datasets",
                     "/api/v1/models")
    },
    ("GET", "/api/v1/jobs/{job_id}/trials/table"): (
        "filter and sort name the job's own metrics and architecture keys (unknown ones answer 422 listing them), "
        "and a metric compares with numbers only",
        _each(lambda e: e.get("loc", [])[:2] in (["query", "filter"], ["query", "sort"])),
    ),
    ("POST", "/api/v1/jobs"): (
        "plug-ins that cannot run together (an N:M sparsifier on a layer with fewer input features than M), a "
        "plug-in's params (checked by its own params_schema in GET /catalog), limits over several fields "
        "(max_trials x epochs, the space's largest network), dataset files the server lacks, objectives that "
        "repeat a metric (uniqueItems compares whole items, not their metric), an agent target the caller has not "
        "registered (each owner's are listed by GET /targets, not the document), target_runtime with a target that "
        "takes none, resources no node of the cluster has (the dispatchers report the nodes, not the document), "
        "mixed_precision without resources.gpus",
        _each(_spec_problem),
    ),
    ("POST", "/api/v1/latency/predict"): (
        "exactly one of architecture and layers, layers whose shapes chain, activations within the server's limit",
        _each(_network_problem),
    ),
    ("GET", "/api/v1/jobs/{job_id}/importance"): (
        "importance needs complete trials whose architectures vary; the job's trials decide",
        _each(lambda e: e.get("loc") == ["query", "objective"] and e.get("type") == "value_error"),
    ),
    ("PATCH", "/api/v1/jobs/{job_id}"): (
        "a budget is only ever raised: the lowest valid max_trials and timeout_s are the job's current ones; "
        "max_trials x the job's epochs stays within the server's trial-epochs",
        _each(lambda e: e.get("type") == "budget_not_raised" or e.get("loc") == ["body", "training", "epochs"]),
    ),
    ("POST", "/api/v1/specs/parse"): (
        "the YAML must parse into a job spec mapping", _each(lambda e: e.get("loc") == ["body", "yaml"])
    ),
    **{
        ("POST", path): ("the uploaded file must be a readable file of its format",
                         _each(lambda e: e.get("loc", [])[:1] == ["body"]))
        for path in ("/api/v1/datasets", "/api/v1/models")
    },
}  # fmt: skip


@schemathesis.check
def positive_data_acceptance_unless_explained(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schema-valid data is accepted, but for the 422s :data:`EXPLAINED` names for the operation."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except Failure:
        explained = EXPLAINED.get((case.operation.method.upper(), case.operation.path))
        if response.status_code == 422 and explained is not None and explained[1](response.json().get("detail")):
            return None
        raise
