"""Minutes-scale benchmarks of SpFDE and SparCL on scikit-learn digits (SparCL: class-incremental tasks)."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_research.digits_task import DigitsCNN, DigitsData, load_digits_data
from stereovoxel_ros.offline.train.lr_schedule import warmup_cosine_lr
from stereovoxel_ros.offline.train.trainer import TrainContext, TrainingError, TrainingMethod

if TYPE_CHECKING:
    from stereovoxel_ros.offline.train.sparse_training import MethodOptions


class BenchmarkError(ValueError):
    """Unknown benchmark method or bad benchmark setting; the message names it."""


DIGITS_METHODS = ("dense", "sparse", "spfde", "derpp", "sparcl")


def make_digits_method(name: str, **options: Any) -> TrainingMethod:
    """A FLOP-metered method by name (per-sample FLOP counts cached: fixed-size inputs); ``dense`` is plain
    training with the same meter."""
    method = _make_method(name, **options)
    method.cache_flops = True
    return method


def _make_method(name: str, **options: Any) -> TrainingMethod:
    from stereovoxel_ros.offline.train import sparcl, sparse_training, spfde

    try:
        if name == "dense":
            if options:
                raise BenchmarkError(f"method 'dense' takes no options, got {sorted(options)}")
            method: TrainingMethod = sparse_training.MeteredMethod()
            method.name = "dense"
            return method
        if name == "sparse":
            return sparse_training.make_method(**options)
        if name == "spfde":
            return spfde.make_method(**options)
        if name == "derpp":
            known, unknown = sparse_training.split_options(sparcl.RehearsalConfig, options)
            if unknown:
                raise BenchmarkError(f"unknown derpp options {sorted(unknown)}")
            return sparcl.DERPlusPlus(sparcl.RehearsalConfig(**known), sparcl.ClassifierReplay())
        if name == "sparcl":
            method = sparcl.make_method(**options)
            method.rehearsal.adapter = sparcl.ClassifierReplay()
            return method
    except TypeError as err:
        raise BenchmarkError(f"bad options for {name}: {err}") from err
    raise BenchmarkError(f"unknown method {name!r}; choose from {', '.join(DIGITS_METHODS)}")


def train_with_method(
    model: nn.Module,
    method: TrainingMethod,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    out_dir: Path | None = None,
    progress: str | None = None,
) -> list[float]:
    """Train a classifier with a TrainingMethod, calling its hooks in the same order as ``Trainer.fit``.

    Returns the mean training loss per epoch. ``method.observe_targets`` (rehearsal methods) gets each batch's
    labels, so buffered samples keep them; ``method.observe_correct`` (SparCL's data removal) whether each
    sample was classified correctly.
    """
    from tqdm import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    total = epochs * steps_per_epoch
    if out_dir is None:  # the method's artifacts (e.g. a rehearsal buffer) go to a fresh temporary folder
        out_dir = Path(tempfile.mkdtemp(prefix="stereovoxel-continual-"))
    method.setup(model, optimizer, TrainContext(epochs, steps_per_epoch, 1, 0, Path(out_dir), len(x)))
    observe = getattr(method, "observe_targets", None)
    observe_correct = getattr(method, "observe_correct", None)
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    step = 0
    for epoch in tqdm(range(epochs), desc=progress or "train", leave=False, disable=progress is None):
        order = rng.permutation(np.asarray(method.select_samples(epoch, np.arange(len(x)))))
        total_loss, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            for group in optimizer.param_groups:
                warmup = min(20, total // 10)
                progress = (step - warmup) / max(1, total - warmup)
                group["lr"] = warmup_cosine_lr(progress, step, lr, warmup)
            xb, yb = x[idx], y[idx]
            if observe is not None:
                observe(yb)
            logits = model(xb)
            per_sample = F.cross_entropy(logits, yb, reduction="none")
            if observe_correct is not None:
                observe_correct(logits.detach().argmax(1) == yb)
            loss = per_sample.mean()
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {float(loss)} at epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.record_sample_losses(epoch, idx, per_sample.detach())
            method.before_optimizer_step(model, step)
            optimizer.step()
            method.after_optimizer_step(model, step)
            total_loss += float(loss.detach()) * len(idx)
            count += len(idx)
            step += 1
        losses.append(total_loss / max(1, count))
        method.on_epoch_end(model, epoch, {"train_loss": losses[-1]})
    return losses


@torch.no_grad()
def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy [0, 1] in eval mode (all classes compete: class-incremental evaluation)."""
    model.eval()
    if len(y) == 0:
        return math.nan
    acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    return acc


@dataclass
class RunResult:
    """One benchmark row."""

    method: str
    command: str
    accuracy: float  # final test accuracy (SparCL: on all tasks seen)
    train_flops: float  # counted, sparse and frozen layers accounted
    train_flops_executed: float  # as executed by the dense simulation
    seconds: float
    forgetting: float = math.nan
    weight_density: float = 1.0
    accuracy_matrix: list[list[float]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def _final(method: TrainingMethod, model: nn.Module) -> dict[str, Any]:
    info = method.finalize(model)
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str, list, dict))}


def _seeded_run(
    method_name: str, options: MethodOptions, seed: int
) -> tuple[DigitsData, DigitsCNN, TrainingMethod]:
    """The digits data, a fresh DigitsCNN and the method of one benchmark run, all from ``seed``."""
    torch.manual_seed(seed)
    data = load_digits_data(seed=seed)
    return data, DigitsCNN(), make_digits_method(method_name, **options)


def _run_result(
    method_name: str,
    command: str,
    info: dict[str, Any],
    accuracy: float,
    started: float,
    forgetting: float = math.nan,
    accuracy_matrix: list[list[float]] | None = None,
) -> RunResult:
    """The row of a run begun at ``started`` (``time.monotonic``) whose method finalized to ``info``."""
    return RunResult(
        method=method_name,
        command=command,
        accuracy=accuracy,
        train_flops=float(info.get("train_flops", math.nan)),
        train_flops_executed=float(info.get("train_flops_executed", math.nan)),
        seconds=time.monotonic() - started,
        forgetting=forgetting,
        weight_density=float(info.get("weight_density", 1.0)),
        accuracy_matrix=accuracy_matrix or [],
        details=info,
    )


def run_digits_standard(
    method_name: str,
    options: MethodOptions,
    epochs: int = 30,
    seed: int = 0,
    command: str = "",
    out_dir: Path | None = None,
    progress: bool = False,
) -> RunResult:
    """Train DigitsCNN on all ten digits with a method; test accuracy and counted training FLOPs."""
    data, model, method = _seeded_run(method_name, options, seed)
    t0 = time.monotonic()
    train_with_method(
        model,
        method,
        data.train_x,
        data.train_y,
        epochs,
        seed=seed,
        out_dir=out_dir,
        progress=method_name if progress else None,
    )
    info = _final(method, model)
    return _run_result(method_name, command, info, accuracy_on(model, data.test_x, data.test_y), t0)


def class_incremental_tasks(data: DigitsData, classes_per_task: int = 2) -> list[tuple[int, ...]]:
    """Digits split into tasks of consecutive classes: (0, 1), (2, 3), ..."""
    classes = sorted(int(c) for c in torch.unique(data.train_y))
    if len(classes) % classes_per_task:
        raise BenchmarkError(f"{len(classes)} classes do not split into tasks of {classes_per_task}")
    return [tuple(classes[i : i + classes_per_task]) for i in range(0, len(classes), classes_per_task)]


def forgetting(matrix: Sequence[Sequence[float]]) -> float:
    """Average forgetting: over all but the last task, best earlier accuracy minus final accuracy."""
    t = len(matrix)
    if t < 2:
        return 0.0
    return float(np.mean([max(matrix[i][j] for i in range(j, t - 1)) - matrix[-1][j] for j in range(t - 1)]))


def run_digits_continual(
    method_name: str,
    options: MethodOptions,
    epochs_per_task: int = 8,
    classes_per_task: int = 2,
    seed: int = 0,
    command: str = "",
    out_dir: Path | None = None,
    progress: bool = False,
) -> RunResult:
    """Class-incremental digits: one method instance over all tasks (``setup`` per task)."""
    data, model, method = _seeded_run(method_name, options, seed)
    tasks = class_incremental_tasks(data, classes_per_task)
    matrix: list[list[float]] = []
    t0 = time.monotonic()
    for t, classes in enumerate(tasks):
        sel = torch.isin(data.train_y, torch.tensor(classes))
        train_with_method(
            model,
            method,
            data.train_x[sel],
            data.train_y[sel],
            epochs_per_task,
            batch_size=32,
            seed=seed + t,
            out_dir=out_dir,
            progress=f"{method_name} task {t + 1}" if progress else None,
        )
        row = []
        for cls in tasks:
            tsel = torch.isin(data.test_y, torch.tensor(cls))
            row.append(accuracy_on(model, data.test_x[tsel], data.test_y[tsel]))
        matrix.append(row)
    info = _final(method, model)
    seen = torch.isin(data.test_y, torch.tensor([c for cls in tasks for c in cls]))
    accuracy = accuracy_on(model, data.test_x[seen], data.test_y[seen])
    return _run_result(method_name, command, info, accuracy, t0, forgetting(matrix), matrix)


# Rows of the two tables: (method, options). Each row is also one `stereovoxel sparse digits` command.
SPFDE_ROWS: list[tuple[str, MethodOptions]] = [
    ("dense", {}),
    ("sparse", {"sparsity": 0.8}),
    ("sparse", {"sparsity": 0.8, "regrow": "random"}),
    ("spfde", {"sparsity": 0.8}),
    ("spfde", {"sparsity": 0.8, "sieve_keep": 1.0}),
    ("spfde", {"sparsity": 0.8, "freeze_schedule": []}),
]
SPARCL_ROWS: list[tuple[str, MethodOptions]] = [
    ("dense", {}),
    ("derpp", {}),
    ("sparcl", {"sparsity": 0.5, "min_weights": 1000}),
    ("sparcl", {"sparsity": 0.75, "min_weights": 1000}),
    ("sparcl", {"sparsity": 0.75, "min_weights": 1000, "grad_sparsity": 0.0, "ddr_schedule": []}),
]


def row_command(benchmark: str, method: str, options: MethodOptions, epochs: int, seed: int) -> str:
    import json
    import shlex

    parts = ["stereovoxel", "sparse", "digits", benchmark, "--method", method, "--epochs", str(epochs)]
    for k, v in options.items():
        parts += ["--method-opt", f"{k}={json.dumps(v, separators=(',', ':'))}"]
    if seed:
        parts += ["--seed", str(seed)]
    return shlex.join(parts)


def run_table(
    benchmark: str,
    rows: Sequence[tuple[str, MethodOptions]] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    out_dir: Path | None = None,
    progress: bool = True,
    on_row: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Run every row of the ``spfde`` or ``sparcl`` table."""
    if benchmark not in ("spfde", "sparcl"):
        raise BenchmarkError(f"benchmark must be 'spfde' or 'sparcl', got {benchmark!r}")
    rows = rows if rows is not None else (SPFDE_ROWS if benchmark == "spfde" else SPARCL_ROWS)
    epochs = epochs or (30 if benchmark == "spfde" else 8)
    results = []
    for method, options in rows:
        cmd = row_command(benchmark, method, options, epochs, seed)
        run = run_digits_standard if benchmark == "spfde" else run_digits_continual
        result = run(method, options, epochs, seed=seed, command=cmd, out_dir=out_dir, progress=progress)
        results.append(result)
        if on_row is not None:
            on_row(result)
    return results


def format_table(results: Sequence[RunResult], baseline: str, continual: bool) -> str:
    """Markdown table; FLOP ratios are against the first row whose method is ``baseline``."""
    base = next((r for r in results if r.method == baseline), results[0])
    if continual:
        head = (
            "| command | acc. all tasks seen | forgetting | weight density | train GFLOPs | vs "
            + baseline
            + " | s |"
        )
    else:
        head = "| command | test acc. | weight density | train GFLOPs | vs " + baseline + " | s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        ratio = r.train_flops / base.train_flops if base.train_flops else math.nan
        cells = [f"`{r.command}`", f"{r.accuracy:.3f}"]
        if continual:
            cells.append(f"{r.forgetting:.3f}")
        cells += [
            f"{r.weight_density:.2f}",
            f"{r.train_flops / 1e9:.2f}",
            f"{ratio:.2f}x",
            f"{r.seconds:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(path: Path, results: Sequence[RunResult], title: str) -> None:
    """Accuracy vs counted training FLOPs, one point per row, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stereovoxel_ros.core.atomic_file import save_figure_atomic

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(results):
        ax.scatter(r.train_flops / 1e9, r.accuracy)
        ax.annotate(f"{i + 1}: {r.method}", (r.train_flops / 1e9, r.accuracy), fontsize=8)
    ax.set_xlabel("training GFLOPs (counted)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    fig.tight_layout()
    save_figure_atomic(fig, Path(path), dpi=100)
