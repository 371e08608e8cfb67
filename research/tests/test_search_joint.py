"""Fine-grained joint search: cheapest accuracy loss per score gain, stops at the budget; Pareto plot."""

from __future__ import annotations

import itertools

import pytest

from stereovoxel_research.search.joint_search import (
    Candidate,
    SearchError,
    joint_search,
    pareto_front,
    plot_search,
)
from stereovoxel_research.search.search_space import SearchSpace, Subnet, count_subnet_params


def _latency(subnet: Subnet) -> float:
    """A known latency model [ms]: attention blocks are expensive, FFNs scale with width·ratio."""
    ms = 0.5
    for w, f, a in zip(subnet.widths, subnet.ffn_ratios, subnet.attn_ratios):
        ms += sum(0.002 * w * r for r in f) + len(a) * (1.0 + 0.001 * w)
    return ms


def _evaluate(subnet: Subnet) -> tuple[float, float]:
    """A known accuracy model: stage-3/4 attention and width matter, expansion ratios barely."""
    loss = 0.1
    for i, (w, f, a) in enumerate(zip(subnet.widths, subnet.ffn_ratios, subnet.attn_ratios)):
        loss += (2 - len(a)) * (0.3 if i >= 2 else 0) + 4.0 / w + sum(0.01 * (4 - r) for r in f + a)
    return loss, max(0.0, 1.0 - loss / 5)


def _score(space: SearchSpace, s: Subnet) -> float:
    largest = space.largest()
    params = count_subnet_params(space, s) / count_subnet_params(space, largest)
    return 0.5 * _latency(s) / _latency(largest) + 0.5 * params


def test_first_step_takes_the_cheapest_action(space: SearchSpace) -> None:
    largest = space.largest()
    # a budget only the largest-gain actions reach would bias the step; use one that needs many steps
    result = joint_search(space, _evaluate, _latency, latency_budget_ms=0.5 * _latency(largest))
    ratios = {
        desc: (_evaluate(s)[0] - _evaluate(largest)[0]) / (_score(space, largest) - _score(space, s))
        for desc, s in space.actions(largest)
    }
    assert result.path[1].action == min(ratios, key=ratios.get)


def test_search_meets_budget_monotonically(space: SearchSpace) -> None:
    budget = 0.6 * _latency(space.largest())
    result = joint_search(space, _evaluate, _latency, latency_budget_ms=budget, params_budget=2_000_000)
    assert result.found.latency_ms <= budget and result.found.params <= 2_000_000
    assert result.path[-2].latency_ms > budget or result.path[-2].params > 2_000_000  # stopped at once
    scores = [_score(space, c.subnet) for c in result.path]
    assert all(b < a for a, b in itertools.pairwise(scores))
    # with attention this valuable, the search narrows and shrinks FFNs before dropping attention blocks
    assert sum(len(a) for a in result.found.subnet.attn_ratios) >= 3
    assert len(result.explored) > len(result.path)
    assert result.to_dict()["found"]["predicted_latency_ms"] == result.found.latency_ms


def test_budget_errors(space: SearchSpace) -> None:
    with pytest.raises(SearchError, match="needs a latency budget"):
        joint_search(space, _evaluate, _latency)
    with pytest.raises(SearchError, match="unreachable"):
        joint_search(space, _evaluate, _latency, latency_budget_ms=0.1)


def test_pareto_front_and_plot(space: SearchSpace, tmp_path) -> None:
    s = space.largest()
    pts = [
        Candidate(s, "", lat, 1, 0.0, acc)
        for lat, acc in [(1, 0.5), (2, 0.4), (3, 0.7), (2.5, 0.7), (4, 0.9)]
    ]
    assert [(c.latency_ms, c.val_acc) for c in pareto_front(pts)] == [(1, 0.5), (2.5, 0.7), (4, 0.9)]
    result = joint_search(space, _evaluate, _latency, latency_budget_ms=0.8 * _latency(s))
    out = tmp_path / "pareto.png"
    plot_search(result, out, {"baseline": (3.0, 0.9)})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_last_step_takes_the_least_lossy_action_within_budget(space: SearchSpace) -> None:
    largest = space.largest()
    # a budget a hair below the largest: every action meets it, the least lossy one must be taken
    result = joint_search(space, _evaluate, _latency, latency_budget_ms=_latency(largest) - 1e-6)
    finishing = [(_evaluate(s)[0], -_score(space, s)) for _, s in space.actions(largest)]
    assert (_evaluate(result.found.subnet)[0], -_score(space, result.found.subnet)) == min(finishing)
