"""Fine-grained joint search: shrink the largest subnet by the cheapest accuracy-per-gain action until in budget."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from stereovoxel_research.search.search_space import SearchSpace, Subnet, count_subnet_params
from stereovoxel_research.search.supernet import Supernet, recalibrate_batchnorm


class SearchError(RuntimeError):
    """The search cannot meet its budget or was asked for none."""


@dataclass
class Candidate:
    """One evaluated subnet: predicted latency [ms], parameters, validation loss and accuracy [0, 1]."""

    subnet: Subnet
    action: str
    latency_ms: float
    params: int
    val_loss: float
    val_acc: float

    def to_dict(self) -> dict:
        return {
            "subnet": self.subnet.to_dict(),
            "describe": self.subnet.describe(),
            "action": self.action,
            "predicted_latency_ms": self.latency_ms,
            "params": self.params,
            "val_loss": self.val_loss,
            "val_acc": self.val_acc,
        }


@dataclass
class SearchResult:
    """The subnet found, the accepted path from the largest subnet, and every subnet evaluated on the way."""

    found: Candidate
    path: list[Candidate]
    explored: list[Candidate] = field(default_factory=list)
    latency_budget_ms: float | None = None
    params_budget: int | None = None

    def to_dict(self) -> dict:
        return {
            "found": self.found.to_dict(),
            "path": [c.to_dict() for c in self.path],
            "explored": [c.to_dict() for c in self.explored],
            "latency_budget_ms": self.latency_budget_ms,
            "params_budget": self.params_budget,
        }


class SubnetEvaluator:
    """Validation (cross-entropy, accuracy) of a subnet with inherited supernet weights and re-estimated BN."""

    def __init__(
        self,
        supernet: Supernet,
        val_x: torch.Tensor,
        val_y: torch.Tensor,
        calib_batches: Sequence[torch.Tensor],
        batch_size: int = 512,
    ) -> None:
        self.supernet, self.val_x, self.val_y = supernet, val_x, val_y
        self.calib_batches, self.batch_size = list(calib_batches), batch_size

    @torch.no_grad()
    def __call__(self, subnet: Subnet) -> tuple[float, float]:
        model = self.supernet.export(subnet)
        recalibrate_batchnorm(model, self.calib_batches)
        loss, correct = 0.0, 0
        for i in range(0, len(self.val_x), self.batch_size):
            logits = model(self.val_x[i : i + self.batch_size])
            y = self.val_y[i : i + self.batch_size]
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        return loss / len(self.val_y), correct / len(self.val_y)


def joint_search(
    space: SearchSpace,
    evaluate: Callable[[Subnet], tuple[float, float]],
    latency_ms: Callable[[Subnet], float],
    latency_budget_ms: float | None = None,
    params_budget: int | None = None,
    latency_weight: float = 0.5,
    progress: bool = False,
) -> SearchResult:
    """From ``space.largest()``, repeatedly apply the depth/width/expansion action with the smallest
    validation-loss increase per gain in the combined score ``w·latency/latency_max + (1-w)·params/params_max``
    until the predicted latency [ms] is within ``latency_budget_ms`` and the size within ``params_budget``.
    Final step: once some actions reach the budget, the one of those with the smallest loss increase is
    taken (so the last step does not overshoot the budget by a large cheap-per-gain action).

    ``evaluate(subnet)`` returns (validation loss, accuracy); ``latency_ms(subnet)`` the predicted latency.
    """
    from tqdm import tqdm

    if latency_budget_ms is None and params_budget is None:
        raise SearchError("joint_search needs a latency budget [ms], a parameter budget, or both")
    cache: dict[Subnet, Candidate] = {}
    explored: list[Candidate] = []

    def candidate(subnet: Subnet, action: str) -> Candidate:
        if subnet not in cache:
            loss, acc = evaluate(subnet)
            cache[subnet] = Candidate(
                subnet, action, latency_ms(subnet), count_subnet_params(space, subnet), loss, acc
            )
            explored.append(cache[subnet])
        return cache[subnet]

    current = candidate(space.largest(), "largest")
    lat_max, params_max = current.latency_ms, current.params

    def score(c: Candidate) -> float:
        return latency_weight * c.latency_ms / lat_max + (1 - latency_weight) * c.params / params_max

    def within_budget(c: Candidate) -> bool:
        return (latency_budget_ms is None or c.latency_ms <= latency_budget_ms) and (
            params_budget is None or c.params <= params_budget
        )

    path = [current]
    bar = tqdm(desc="joint search", disable=not progress, leave=False)
    while not within_budget(current):
        best, best_ratio, finishing = None, float("inf"), []
        for action, subnet in space.actions(current.subnet):
            cand = candidate(subnet, action)
            gain = score(current) - score(cand)
            if gain <= 0:
                continue
            if within_budget(cand):
                finishing.append(cand)
            ratio = (cand.val_loss - current.val_loss) / gain
            if ratio < best_ratio:
                best, best_ratio = cand, ratio
        if finishing:  # least loss; among equal losses the least shrunk (highest score)
            best = min(finishing, key=lambda c: (c.val_loss, -score(c)))
        if best is None:
            raise SearchError(
                f"no action reduces {current.subnet.describe()} further (predicted {current.latency_ms:.3f} ms, "
                f"{current.params} params); budget {latency_budget_ms} ms / {params_budget} params is unreachable"
            )
        current = Candidate(
            best.subnet, best.action, best.latency_ms, best.params, best.val_loss, best.val_acc
        )
        path.append(current)
        bar.update(1)
        bar.set_postfix(ms=f"{current.latency_ms:.2f}", acc=f"{current.val_acc:.3f}")
    bar.close()
    return SearchResult(current, path, explored, latency_budget_ms, params_budget)


def pareto_front(points: Sequence[Candidate]) -> list[Candidate]:
    """Candidates not dominated in (lower predicted latency, higher validation accuracy), by latency."""
    front: list[Candidate] = []
    for c in sorted(points, key=lambda c: (c.latency_ms, -c.val_acc)):
        if not front or c.val_acc > front[-1].val_acc:
            front.append(c)
    return front


def plot_search(
    result: SearchResult,
    path: str | os.PathLike,
    baselines: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Pareto-front PNG: explored subnets, the accepted path, the front, the found subnet and
    ``baselines`` (name → (latency [ms], accuracy))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stereovoxel_ros.core.atomic_file import save_figure_atomic

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(
        [c.latency_ms for c in result.explored],
        [100 * c.val_acc for c in result.explored],
        s=10,
        c="0.7",
        label="evaluated subnets",
    )
    ax.plot(
        [c.latency_ms for c in result.path],
        [100 * c.val_acc for c in result.path],
        "-",
        c="C0",
        lw=1,
        label="search path",
    )
    front = pareto_front(result.explored)
    ax.step(
        [c.latency_ms for c in front],
        [100 * c.val_acc for c in front],
        "o-",
        where="post",
        c="C2",
        lw=1.5,
        ms=4,
        label="Pareto front",
    )
    ax.scatter(
        [result.found.latency_ms], [100 * result.found.val_acc], marker="*", s=180, c="C3", label="found"
    )
    for i, (name, (lat, acc)) in enumerate((baselines or {}).items()):
        ax.scatter([lat], [100 * acc], marker="X", s=80, c=f"C{4 + i}", label=name)
    if result.latency_budget_ms is not None:
        ax.axvline(result.latency_budget_ms, ls="--", c="0.4", lw=1, label="latency budget")
    ax.set_xlabel("latency [ms] (lookup table, batch 1)")
    ax.set_ylabel("validation accuracy [%] (inherited weights)")
    ax.set_title("EfficientFormerV2 fine-grained joint search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
