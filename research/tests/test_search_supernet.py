"""Slimmable supernet: exported subnets reproduce the shared-weight forward; sandwich training learns."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from stereovoxel_research.search.search_space import SearchSpace, SearchSpaceError
from stereovoxel_research.search.supernet import Supernet, recalibrate_batchnorm, train_supernet
from stereovoxel_ros.core.models.efficientformer_v2 import EFFICIENTFORMER_V2_CONFIGS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see the root conftest.py


def _small_space(classes: int = 3) -> SearchSpace:
    base = replace(
        EFFICIENTFORMER_V2_CONFIGS["efficientformerv2_s0"],
        widths=(16, 24, 32, 48),
        depths=(2, 2, 3, 3),
        mlp_ratios=((4, 4), (4, 4), (4, 4, 4), (4, 4, 4)),
        num_attn=(0, 0, 1, 2),
        key_dim=8,
        num_heads=2,
        downsample_key_dim=8,
        in_chans=1,
        num_classes=classes,
        layer_scale_init=0.5,
    )
    return SearchSpace(base, image_hw=(24, 20))


def test_export_matches_shared_weight_forward() -> None:
    torch.manual_seed(0)
    space = _small_space()
    supernet = Supernet(space)
    with torch.no_grad():  # non-trivial BN statistics and biases, so slicing mistakes show
        for m in supernet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.1)
    supernet.eval()
    x = torch.randn(3, 1, 24, 20)
    rng = random.Random(0)
    outputs = []
    for subnet in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(6))]:
        model = supernet.export(subnet).eval()
        with torch.no_grad():
            shared, standalone = supernet(x, subnet), model(x)
        assert torch.allclose(shared, standalone, atol=1e-5), subnet.describe()
        outputs.append(shared)
    assert not torch.allclose(outputs[0], outputs[1])  # different subnets really differ
    with pytest.raises(SearchSpaceError):
        supernet.export(replace(space.largest(), widths=(16, 24, 32, 40)))


def test_recalibrated_batchnorm_equals_batch_statistics() -> None:
    torch.manual_seed(0)
    space = _small_space()
    model = Supernet(space).export(space.smallest())
    x = torch.randn(16, 1, 24, 20)
    recalibrate_batchnorm(model, [x[:8], x[8:]])
    stem_bn = model.stem[0][1]
    with torch.no_grad():
        pre = model.stem[0][0](x)
    assert not model.training
    assert torch.allclose(stem_bn.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)


def test_sandwich_training_lowers_loss_of_large_and_small_subnets() -> None:
    torch.manual_seed(0)
    space = _small_space(classes=3)
    # three classes of oriented stripes plus noise
    n = 96
    y = torch.arange(n) % 3
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(20.0), indexing="ij")
    patterns = torch.stack([torch.sin(yy), torch.sin(xx), torch.sin((xx + yy) / 1.5)])
    x = (patterns[y] + 0.5 * torch.randn(n, 24, 20)).unsqueeze(1)
    supernet = Supernet(space)

    def loss_of(subnet) -> float:
        supernet.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(supernet(x, subnet), y))

    before = {s: loss_of(s) for s in (space.largest(), space.smallest())}
    losses = train_supernet(
        supernet,
        lambda epoch: ((x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)),
        epochs=4,
        steps_per_epoch=3,
        lr=5e-3,
    )
    assert losses[-1] < losses[0]
    for subnet, loss in before.items():
        assert loss_of(subnet) < loss, subnet.describe()
