"""A minutes-scale proxy task for the compression methods: scikit-learn digits (8×8) with a small BN CNN."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DigitsCNNConfig:
    """Channel widths of the 3×3 conv blocks (at least two; a 2×2 max-pool follows the second)."""

    widths: tuple[int, ...] = (16, 32, 64)
    num_classes: int = 10


PIM_DIGITS_WIDTHS: tuple[int, ...] = (16, 32, 32, 64, 64)
"""The deeper digits CNN of the PIM-QAT experiments: 5 convs + a linear layer, the middle 4 convs on the PIM."""


class DigitsCNN(nn.Module):
    """conv-BN-ReLU blocks (pool after the second), global average pool, linear classifier; input (B, 1, 8, 8)."""

    def __init__(self, config: DigitsCNNConfig | None = None) -> None:
        super().__init__()
        cfg = config or DigitsCNNConfig()
        if len(cfg.widths) < 2:
            raise ValueError(f"DigitsCNNConfig.widths={cfg.widths} needs at least two conv blocks")
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(cfg.widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if i == 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@dataclass
class DigitsData:
    """Train/test tensors: images (N, 1, 8, 8) standardized, labels (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def batches(self, batch_size: int, generator: torch.Generator, train: bool = True) -> Iterator[tuple]:
        """Shuffled training batches (or ordered test batches)."""
        x, y = (self.train_x, self.train_y) if train else (self.test_x, self.test_y)
        order = torch.randperm(len(x), generator=generator) if train else torch.arange(len(x))
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            yield x[idx], y[idx]


def load_digits_data(test_fraction: float = 0.2, seed: int = 0) -> DigitsData:
    """scikit-learn's bundled digits (no download), split by a seeded permutation; pixels standardized."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return DigitsData(x[train], y[train], x[test], y[test])


@torch.no_grad()
def accuracy(model: nn.Module, data: DigitsData, batch_size: int = 256) -> float:
    """Top-1 test accuracy [0, 1] in eval mode."""
    model.eval()
    correct = 0
    for x, y in data.batches(batch_size, torch.Generator(), train=False):
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / len(data.test_y)


def train_classifier(
    model: nn.Module,
    data: DigitsData,
    epochs: int,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: str | None = None,
) -> list[float]:
    """AdamW + cosine schedule; ``loss_fn(model, x, y)`` overrides cross-entropy; returns mean loss per epoch."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(data.train_x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    losses = []
    bar = tqdm(range(epochs), desc=progress or "train", leave=False, disable=progress is None)
    for _ in bar:
        model.train()
        total, count = 0.0, 0
        for x, y in data.batches(batch_size, gen):
            loss = loss_fn(model, x, y) if loss_fn else F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        losses.append(total / count)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses
