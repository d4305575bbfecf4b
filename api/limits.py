"""Per-owner limits on what one job may ask for, checked at submission so no spec exhausts the machine.

A spec that can never fit answers 422 naming the field; the quotas (429: active jobs, jobs created
in the last hour, stored spec bytes) depend on the owner's other jobs and are enforced by the store
in the same transaction as the insert.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, status

from nas import registry
from nas.settings import Settings
from nas.cluster import this_machine, unmet
from nas.specs import JobSpec
from nas.store import Store


def _error(loc: tuple[str, ...], msg: str, value: Any) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": "limit_exceeded", "input": value}


def spec_problems(spec: JobSpec, settings: Settings) -> list[dict[str, Any]]:
    """Every limit the spec exceeds, as FastAPI-style validation errors.

    Training work is counted in trial-epochs: ``budget.max_trials × training.epochs``, the most
    epochs of training the job can run whatever its early stopping does.
    """
    problems = []
    size = len(json.dumps(spec.model_dump(mode="json"), separators=(",", ":")))
    if size > settings.limit_spec_bytes:
        problems.append(_error((), f"the spec is {size} bytes as stored JSON; this server allows "
                                   f"{settings.limit_spec_bytes} (NAS_LIMIT_SPEC_BYTES)", None))  # fmt: skip
    trials, epochs = spec.budget.max_trials, spec.training.epochs
    if trials > settings.limit_trials_per_job:
        problems.append(_error(("budget", "max_trials"),
                               f"at most {settings.limit_trials_per_job} trials per job on this server", trials))
    if trials * epochs > settings.limit_trial_epochs:
        problems.append(_error(("training", "epochs"),
                               f"budget.max_trials × training.epochs = {trials * epochs} trial-epochs; "
                               f"this server allows {settings.limit_trial_epochs} per job", epochs))
    limit = settings.limit_params
    wanted = spec.constraints.max_params
    if wanted is not None and wanted > limit:
        problems.append(_error(("constraints", "max_params"), f"at most {limit} parameters on this server", wanted))
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    dataset = registry.datasets.create(spec.dataset.name, spec.dataset.params)
    shape = dataset.shape()
    largest = space.max_params(*shape)
    if largest > limit:
        problems.append(_error(("search_space", "params", *space.largest_at(limit, *shape)),
                               f"the largest architecture of this space has {largest} parameters; "
                               f"this server allows {limit}", spec.search_space.params))
    return problems


def check_resources(spec: JobSpec, store: Store) -> None:
    """422 at ``resources.gpus`` (or ``cpus``) when no node of the Ray cluster could start one of the job's trials.

    The cluster is what the live dispatchers reported (:mod:`nas.cluster`); before any has, this
    machine stands in for it, as the one ``nas serve``'s local Ray runs on.
    """
    nodes = store.cluster_nodes()
    stand_in = nodes is None
    problem = unmet(spec.resources, [this_machine()] if nodes is None else nodes)
    if problem is None:
        return
    field, message = problem
    if stand_in:
        message += " (no dispatcher has reported its Ray cluster yet: this machine stands in for it)"
    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{
        "loc": ["body", "resources", field], "msg": message, "type": "resources_incompatible",
        "input": getattr(spec.resources, field),
    }])  # fmt: skip


def check_spec(spec: JobSpec, settings: Settings) -> None:
    """422 with every exceeded limit, or nothing."""
    problems = spec_problems(spec, settings)
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)
