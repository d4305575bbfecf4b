"""Lottery-ticket chains: lineage, per-round sparsity, rewinding, restart, and real rounds on digits."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from nas import registry
from nas.specs import JobSpec, Trial, TrialState
from nas.strategies.base import WAIT
from nas.strategies.lottery_ticket import LotteryTicket

MLP = {"min_depth": 1, "max_depth": 2, "width_choices": [16, 32], "activation_choices": ["relu"]}


def _spec(space: str = "sparse_mlp", space_params: dict | None = None, max_trials: int = 20, **strategy: object) -> JobSpec:
    return JobSpec.model_validate(
        {
            "search_space": {"name": space, "params": MLP if space_params is None else space_params},
            "strategy": {"name": "lottery_ticket", "params": {"n_chains": 2, "rounds": 2, **strategy}},
            "dataset": {"name": "digits"},
            "training": {"epochs": 2, "batch_size": 128, "lr": 0.005},
            "budget": {"max_trials": max_trials},
        }
    )


def _strategy(spec: JobSpec) -> LotteryTicket:
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    return LotteryTicket(LotteryTicket.Params.model_validate(spec.strategy.params), space, spec)


def _trial(number: int, plan_arch: dict, state: TrialState, parent: str | None = None) -> Trial:
    return Trial(
        id=f"t{number}",
        job_id="job",
        number=number,
        state=state,
        arch=plan_arch,
        parent_id=parent,
        created_at=datetime.now(timezone.utc),
    )


def test_chains_run_side_by_side_and_each_round_is_the_child_of_the_previous() -> None:
    strategy = _strategy(_spec())
    roots = [strategy.ask(), strategy.ask()]
    assert [(p.arch["lottery_chain"], p.arch["lottery_round"], p.parent_id) for p in roots] == [(0, 0, None), (1, 0, None)]
    assert strategy.ask() is WAIT  # every chain is training
    strategy.tell(_trial(1, roots[1].arch, TrialState.complete))
    nxt = strategy.ask()  # chain 1 goes on while chain 0 still trains
    assert (nxt.arch["lottery_chain"], nxt.arch["lottery_round"], nxt.parent_id) == (1, 1, "t1")
    assert LotteryTicket.space_arch(nxt.arch) == LotteryTicket.space_arch(roots[1].arch)
    assert LotteryTicket.planned_density(nxt.arch) == pytest.approx(0.8)  # predicted latency at (1 - p) ** r
    assert strategy.ask() is WAIT

    # run the rest, finishing trials in creation order: (chain, round) -> trial id
    ids = {(1, 0): "t1"}
    pending, number = [(roots[0], "t0"), (nxt, "t2")], 3
    while pending:
        plan, trial_id = pending.pop(0)
        c, r = plan.arch["lottery_chain"], plan.arch["lottery_round"]
        assert plan.parent_id == (None if r == 0 else ids[(c, r - 1)])  # lineage: the previous round of its chain
        ids[(c, r)] = trial_id
        strategy.tell(Trial.model_validate({**_trial(0, plan.arch, TrialState.complete, plan.parent_id).model_dump(), "id": trial_id}))
        while (more := strategy.ask()) not in (None, WAIT):
            pending.append((more, f"t{number}"))
            number += 1
    assert strategy.ask() is None
    assert sorted(ids) == [(c, r) for c in range(2) for r in range(3)]  # 2 chains x (dense + 2 rounds)


def test_a_failed_round_ends_only_its_chain() -> None:
    strategy = _strategy(_spec(n_chains=2, rounds=1))
    a, b = strategy.ask(), strategy.ask()
    strategy.tell(_trial(0, a.arch, TrialState.failed))
    strategy.tell(_trial(1, b.arch, TrialState.complete))
    plan = strategy.ask()
    assert (plan.arch["lottery_chain"], plan.parent_id) == (1, "t1")
    strategy.tell(_trial(2, plan.arch, TrialState.complete, "t1"))
    assert strategy.ask() is None


def test_chains_sample_their_own_arch_or_share_one() -> None:
    params = {"min_depth": 1, "max_depth": 3, "width_choices": [8, 16, 32, 64, 128], "activation_choices": ["relu", "tanh"]}
    own = _strategy(_spec(space_params=params, n_chains=4, max_trials=20))
    archs = [LotteryTicket.space_arch(own.ask().arch) for _ in range(4)]
    assert len({str(sorted(a.items())) for a in archs}) > 1
    same = _strategy(_spec(space_params=params, n_chains=4, max_trials=20, same_arch=True, seeds=[3, 4, 5, 6]))
    archs = [LotteryTicket.space_arch(same.ask().arch) for _ in range(4)]
    assert all(a == archs[0] for a in archs)


def test_replay_after_restart_never_repeats_a_round() -> None:
    spec = _spec()
    fresh = _strategy(spec)
    a, b = fresh.ask(), fresh.ask()
    a1 = {**a.arch, "lottery_round": 1}
    history = [
        _trial(0, a.arch, TrialState.complete),
        _trial(1, b.arch, TrialState.complete),
        _trial(2, a1, TrialState.running, "t0"),  # re-queued by the runner, told when it ends
    ]
    strategy = LotteryTicket.from_history(LotteryTicket.Params.model_validate(spec.strategy.params), fresh.space, spec, history)
    plan = strategy.ask()
    assert (plan.arch["lottery_chain"], plan.arch["lottery_round"], plan.parent_id) == (1, 1, "t1")
    assert strategy.ask() is WAIT
    strategy.tell(_trial(2, a1, TrialState.complete, "t0"))
    plan = strategy.ask()
    assert (plan.arch["lottery_chain"], plan.arch["lottery_round"], plan.parent_id) == (0, 2, "t2")


def test_check_spec() -> None:
    with pytest.raises(ValidationError) as info:
        _spec(max_trials=5)  # 2 chains x 3 rounds
    assert [e["loc"] for e in info.value.errors()] == [("budget", "max_trials")]
    with pytest.raises(ValidationError) as info:
        _spec(space="dass_darts", space_params={})
    assert ("search_space", "name") in [e["loc"] for e in info.value.errors()]
    with pytest.raises(ValidationError, match="rates has 1 entries but n_chains is 2"):
        _spec(rates=[0.3])
    _spec(space="supernet", space_params={})  # any space that builds standalone networks


def test_per_round_sparsity_follows_one_minus_one_minus_p_to_the_r(torch_single_thread: None) -> None:
    import torch

    from nas.sparse.masks import masks, prunable_weights, set_mask
    from nas.supertickets.imp import RoundPlan, expected_survivors, next_masks

    space = registry.search_spaces.create("sparse_mlp", {})
    for scope in ("layer", "global"):
        plan = RoundPlan(chain=0, round=1, seed=0, rate=0.2, rate_output=0.1, rewind_step=0, scope=scope)
        torch.manual_seed(0)
        trained = space.build({"depth": 2, "width_0": 300, "width_1": 100, "activation": "relu"}, (1, 28, 28), 10)
        owners = prunable_weights(trained)
        for r in range(1, 6):
            for name, mask in next_masks(trained, plan).items():
                set_mask(*owners[name], mask)
            with torch.no_grad():  # the next round trains: survivors change magnitude
                for module, attr in owners.values():
                    module.parametrizations.weight.original.mul_(torch.rand_like(module.weight) + 0.5)
            current = masks(trained)
            hidden = sum(int(current[n].sum()) for n in ("fc0.weight", "fc1.weight"))
            total = sum(current[n].numel() for n in ("fc0.weight", "fc1.weight"))
            assert hidden / total == pytest.approx((1 - 0.2) ** r, abs=2e-3), (scope, r)
            assert int(current["out.weight"].sum()) == expected_survivors(1000, 0.1, r)
            if scope == "layer":
                assert int(current["fc0.weight"].sum()) == expected_survivors(784 * 300, 0.2, r)


def test_rounds_on_digits_rewind_to_theta_k_and_keep_pruned_weights_pruned(torch_single_thread: None, tmp_path: Path) -> None:
    import torch

    from nas.sparse.imp import clone_state
    from nas.sparse.masks import masks
    from nas.sparse.serialization import read_metadata
    from nas.supertickets.imp import REWIND_KEY
    from nas.supertickets.train import decode_tensors, train
    from nas.training import load_data, load_trained_model, trial_seed, weight_optimizer

    k = 3
    spec = _spec(n_chains=1, rounds=2, rewind_step=k, rate=0.5)
    strategy = _strategy(spec)
    root = strategy.ask()
    epochs: list[dict] = []
    r0 = LotteryTicket.run_trial(spec, root.arch, tmp_path, lambda e, m: epochs.append(m), None)
    assert [m["round"] for m in epochs] == [0.0, 0.0] and r0.metrics["sparsity"] == 0.0
    assert r0.outputs["chain"] == 0 and r0.outputs["round"] == 0

    # θk in the root's metadata is the network after exactly k steps of the root's own training
    arch = LotteryTicket.space_arch(root.arch)
    space = registry.search_spaces.create("sparse_mlp", MLP)
    data = load_data(spec, tmp_path)
    torch.manual_seed(trial_seed(spec, {"lottery_seed": 0, "arch": arch}))
    replica = space.build(arch, data.input_shape, data.num_classes)
    theta0 = clone_state(replica)
    seed = trial_seed(spec, {"lottery_seed": 0, "arch": arch, "round": 0})
    train(replica, weight_optimizer(replica.parameters(), spec.training), data, spec, seed, lambda e, m: None, 1, max_steps=k)
    rewind = decode_tensors(read_metadata(r0.model_bytes)[REWIND_KEY])
    assert all(torch.equal(rewind[name], tensor) for name, tensor in clone_state(replica).items())
    assert not torch.equal(rewind["fc0.weight"], theta0["fc0.weight"])

    strategy.tell(_trial(0, root.arch, TrialState.complete))
    plan = strategy.ask()
    assert plan.parent_id == "t0" and plan.arch["lottery_round"] == 1
    r1 = LotteryTicket.run_trial(spec, plan.arch, tmp_path, lambda e, m: None, r0.model_bytes)
    assert read_metadata(r1.model_bytes)[REWIND_KEY] == read_metadata(r0.model_bytes)[REWIND_KEY]  # the same θk
    hidden = r1.outputs["densities"]["fc0.weight"]
    assert hidden == pytest.approx(0.5, abs=1e-3)
    strategy.tell(_trial(1, plan.arch, TrialState.complete, "t0"))
    plan2 = strategy.ask()
    r2 = LotteryTicket.run_trial(spec, plan2.arch, tmp_path, lambda e, m: None, r1.model_bytes)
    assert r2.outputs["densities"]["fc0.weight"] == pytest.approx(0.25, abs=1e-3)
    m1, m2 = masks(load_trained_model(r1.model_bytes)), masks(load_trained_model(r2.model_bytes))
    assert all(bool((m2[n] <= m1[n]).all()) for n in m1)  # once pruned, always pruned
    strategy.tell(_trial(2, plan2.arch, TrialState.complete, "t1"))
    assert strategy.ask() is None

    with pytest.raises(ValueError, match="has as parent round 0"):  # round 2 given round 0's model
        LotteryTicket.run_trial(spec, plan2.arch, tmp_path, lambda e, m: None, r0.model_bytes)


def test_round_one_starts_from_the_masked_rewind_point(torch_single_thread: None, tmp_path: Path) -> None:
    """With a learning rate too small to move the weights, a round ends where it started: θ0 under the new mask."""
    import torch

    from nas.sparse.masks import masks
    from nas.sparse.serialization import read_metadata
    from nas.supertickets.imp import REWIND_KEY
    from nas.supertickets.train import decode_tensors
    from nas.training import load_trained_model

    spec = JobSpec.model_validate({**_spec(n_chains=1, rounds=1).model_dump(mode="json"), "training": {"epochs": 1, "lr": 1e-9}})
    strategy = _strategy(spec)
    root = strategy.ask()
    r0 = LotteryTicket.run_trial(spec, root.arch, tmp_path, lambda e, m: None, None)
    theta0 = decode_tensors(read_metadata(r0.model_bytes)[REWIND_KEY])
    strategy.tell(_trial(0, root.arch, TrialState.complete))
    r1 = LotteryTicket.run_trial(spec, strategy.ask().arch, tmp_path, lambda e, m: None, r0.model_bytes)
    model = load_trained_model(r1.model_bytes)
    current = masks(model)
    for name, mask in current.items():
        weight = model.get_parameter(name.replace(".weight", ".parametrizations.weight.original"))
        assert torch.allclose(weight, theta0[name] * mask, atol=1e-6)
