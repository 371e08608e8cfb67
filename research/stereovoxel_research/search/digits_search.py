"""The minutes-scale demonstration task of the search: scikit-learn digits upsampled, against MobileNetV2."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stereovoxel_research.search.latency_table import LatencyTable
from stereovoxel_research.search.search_space import SearchSpace, Subnet, space_from_dict, space_to_dict
from stereovoxel_research.search.supernet import Supernet, train_supernet
from stereovoxel_ros.core.atomic_file import atomic_write
from stereovoxel_ros.core.models.efficientformer_v2 import EFFICIENTFORMER_V2_CONFIGS


class SearchTaskError(RuntimeError):
    """A supernet checkpoint is unreadable or does not match the task."""


@dataclass
class DigitsTask:
    """Digits images (N, 1, S, S) standardized and bilinearly upsampled; train / validation / test splits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def train_batches(self, batch_size: int, seed: int):
        """Shuffled (x, y) training batches; a fresh order for every ``seed``."""
        order = torch.randperm(len(self.train_x), generator=torch.Generator().manual_seed(seed))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield self.train_x[idx], self.train_y[idx]


def load_digits_task(image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> DigitsTask:
    """scikit-learn's bundled digits (no download): the compression task's test split; its training split
    divided into training and validation (the search decides on validation, results are reported on test)."""
    from stereovoxel_research.digits_task import load_digits_data

    data = load_digits_data(seed=seed)

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)

    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed + 1))
    n_val = round(len(order) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return DigitsTask(
        up(data.train_x[train]),
        data.train_y[train],
        up(data.train_x[val]),
        data.train_y[val],
        up(data.test_x),
        data.test_y,
    )


def digits_space(variant: str = "efficientformerv2_s0", image_size: int = 32) -> SearchSpace:
    """Search space around a published variant, for 1-channel 10-class input of ``image_size`` [px].

    Layer scale starts at 0.1 instead of 1e-5 so that minutes of training move the residual branches."""
    if variant not in EFFICIENTFORMER_V2_CONFIGS:
        raise KeyError(
            f"unknown EfficientFormerV2 variant {variant!r}; known: {sorted(EFFICIENTFORMER_V2_CONFIGS)}"
        )
    base = replace(EFFICIENTFORMER_V2_CONFIGS[variant], in_chans=1, num_classes=10, layer_scale_init=0.1)
    return SearchSpace(base, image_hw=(image_size, image_size))


def train_digits_supernet(
    space: SearchSpace,
    task: DigitsTask,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    steps_per_epoch: int | None = None,
) -> tuple[Supernet, list[float]]:
    """A supernet trained with the sandwich rule on the task's training split (all of it per epoch unless
    ``steps_per_epoch`` caps the batches)."""
    torch.manual_seed(seed)
    supernet = Supernet(space)
    steps = len(task.train_x) // batch_size
    steps = min(steps, steps_per_epoch) if steps_per_epoch else steps
    losses = train_supernet(
        supernet,
        lambda epoch: task.train_batches(batch_size, seed * 1000 + epoch),
        epochs,
        steps,
        lr=lr,
        seed=seed,
        progress="supernet",
    )
    return supernet, losses


def save_supernet(path: str | os.PathLike, supernet: Supernet, extra: dict | None = None) -> None:
    """Weights and search space in one file, written atomically."""
    payload = {
        "space": space_to_dict(supernet.space),
        "state_dict": supernet.state_dict(),
        "extra": extra or {},
    }
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


def load_supernet(path: str | os.PathLike) -> tuple[Supernet, dict]:
    """(supernet, extra) from ``save_supernet``'s file."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=False)
        supernet = Supernet(space_from_dict(payload["space"]))
        supernet.load_state_dict(payload["state_dict"])
    except (OSError, KeyError, RuntimeError) as err:
        raise SearchTaskError(f"cannot load supernet checkpoint {path}: {err}") from err
    return supernet, payload.get("extra", {})


def train_classifier_on_task(
    model: nn.Module,
    task: DigitsTask,
    epochs: int,
    lr: float = 3e-3,
    seed: int = 0,
    progress: str | None = None,
) -> float:
    """Train ``model`` with the compression task's recipe (AdamW, one-cycle) on train+val; test accuracy [0, 1]."""
    from stereovoxel_research.digits_task import DigitsData, accuracy, train_classifier

    data = DigitsData(
        torch.cat([task.train_x, task.val_x]), torch.cat([task.train_y, task.val_y]), task.test_x, task.test_y
    )
    torch.manual_seed(seed)
    train_classifier(model, data, epochs, lr=lr, seed=seed, progress=progress)
    return accuracy(model, data)


def mobilenet_v2_baseline(name: str = "mobilenetv2_100") -> nn.Module:
    """The MobileNetV2-style baseline for the digits task (1 channel in, 10 classes)."""
    from stereovoxel_ros.core.models.mobilenet_v2 import mobilenet_v2

    return mobilenet_v2(name, in_chans=1, num_classes=10)


def calibration_batches(task: DigitsTask, images: int = 128) -> list[torch.Tensor]:
    """Training images for BatchNorm re-estimation of inherited subnets (one batch)."""
    return [task.train_x[:images]]


@torch.no_grad()
def test_accuracy(model: nn.Module, task: DigitsTask) -> float:
    """Top-1 accuracy [0, 1] on the test split (eval mode)."""
    model.eval()
    return float((model(task.test_x).argmax(1) == task.test_y).float().mean())


def compare_with_baseline(
    supernet: Supernet,
    subnet: Subnet,
    table: LatencyTable,
    baseline: str = "mobilenetv2_100",
    epochs: int = 8,
    finetune_epochs: int = 3,
    seed: int = 0,
) -> list[dict]:
    """Rows of the comparison table: the MobileNetV2 baseline and the searched subnet (inherited weights,
    inherited + fine-tuned, from scratch), each with params, latency [ms] measured here and test accuracy."""
    from stereovoxel_research.search.latency_table import measure_model_latency_ms
    from stereovoxel_research.search.supernet import recalibrate_batchnorm
    from stereovoxel_ros.core.models.efficientformer_v2 import EfficientFormerV2, count_parameters

    space = supernet.space
    task = load_digits_task(space.image_hw[0], seed=seed)
    shape = (1, space.base.in_chans, *space.image_hw)
    base_model = mobilenet_v2_baseline(baseline)
    base_acc = train_classifier_on_task(base_model, task, epochs, seed=seed, progress=baseline)
    inherited = supernet.export(subnet)
    recalibrate_batchnorm(inherited, calibration_batches(task, 256))
    inherited_acc = test_accuracy(inherited, task)
    finetuned_acc = train_classifier_on_task(
        inherited, task, finetune_epochs, lr=1e-3, seed=seed, progress="finetune"
    )
    scratch = EfficientFormerV2(subnet.config(space.base))
    scratch_acc = train_classifier_on_task(scratch, task, epochs, seed=seed, progress="searched (scratch)")
    # interleave the two latency measurements so both see the same machine load
    base_ms, searched_ms = float("inf"), float("inf")
    for _ in range(3):
        base_ms = min(base_ms, measure_model_latency_ms(base_model, shape))
        searched_ms = min(searched_ms, measure_model_latency_ms(scratch, shape))
    predicted = table.predict_ms(space, subnet)
    base_row = {
        "model": baseline,
        "training": f"scratch {epochs} ep",
        "params": count_parameters(base_model),
        "predicted_ms": None,
        "measured_ms": base_ms,
        "test_acc": base_acc,
    }
    searched = {"model": f"searched {subnet.describe()}", "params": count_parameters(scratch)}
    rows = [
        base_row,
        {**searched, "training": "inherited (supernet + BN re-estimation)", "test_acc": inherited_acc},
        {**searched, "training": f"inherited + fine-tune {finetune_epochs} ep", "test_acc": finetuned_acc},
        {**searched, "training": f"scratch {epochs} ep", "test_acc": scratch_acc},
    ]
    for row in rows[1:]:
        row.update(predicted_ms=predicted, measured_ms=searched_ms)
    for row in rows:
        row["latency_vs_baseline"] = row["measured_ms"] / base_ms
        row["lut_error_pct"] = (
            None
            if row["predicted_ms"] is None
            else 100 * (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"]
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``compare_with_baseline`` rows."""
    lines = [
        "| model | training | params [M] | LUT pred. [ms] | measured [ms] | latency / baseline | test acc [%] |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pred = "—" if r["predicted_ms"] is None else f"{r['predicted_ms']:.3f} ({r['lut_error_pct']:+.1f} %)"
        lines.append(
            f"| {r['model']} | {r['training']} | {r['params'] / 1e6:.3f} | {pred} | {r['measured_ms']:.3f} | "
            f"{r['latency_vs_baseline']:.2f} | {100 * r['test_acc']:.2f} |"
        )
    return "\n".join(lines)
