"""EfficientFormerV2: published sizes, feature pyramid at any input size, size-agnostic attention biases."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch

from stereovoxel_ros.core.models.efficientformer_v2 import (
    EFFICIENTFORMER_V2_CONFIGS,
    PUBLISHED_PARAMS_M,
    Attention4D,
    EfficientFormerV2,
    EfficientFormerV2ConfigError,
    RelativePositionBias,
    count_parameters,
    efficientformer_v2,
    stage_resolutions,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see the root conftest.py


def _timm_usable() -> tuple[bool, str]:
    if importlib.util.find_spec("timm") is None:
        return False, "timm is not installed (it needs torchvision, which does not import beside this torch)"
    try:
        import timm  # noqa: F401
    except Exception as err:  # timm's import error is whatever its dependencies raise
        return False, f"timm does not import here: {err}"
    return True, ""


@pytest.mark.parametrize("name", sorted(EFFICIENTFORMER_V2_CONFIGS))
def test_parameter_count_matches_published(name: str) -> None:
    # The published ImageNet models carry a classifier and a distillation head over 1000 classes.
    with torch.device("meta"):
        model = efficientformer_v2(name, num_classes=1000, distillation_head=True)
    params_m = count_parameters(model) / 1e6
    assert params_m == pytest.approx(PUBLISHED_PARAMS_M[name], rel=0.03), f"{name}: {params_m:.3f} M"


def test_published_widths_and_depths() -> None:
    expected = {
        "efficientformerv2_s0": ((32, 48, 96, 176), (2, 2, 6, 4), 2),
        "efficientformerv2_s1": ((32, 48, 120, 224), (3, 3, 9, 6), 2),
        "efficientformerv2_s2": ((32, 64, 144, 288), (4, 4, 12, 8), 4),
        "efficientformerv2_l": ((40, 80, 192, 384), (5, 5, 15, 10), 6),
    }
    for name, (widths, depths, n_attn) in expected.items():
        cfg = EFFICIENTFORMER_V2_CONFIGS[name]
        assert (cfg.widths, cfg.depths, cfg.num_attn) == (widths, depths, (0, 0, n_attn, n_attn))


@pytest.fixture(scope="module")
def s0() -> EfficientFormerV2:
    torch.manual_seed(0)
    return efficientformer_v2("efficientformerv2_s0").eval()


@pytest.mark.parametrize("hw", [(224, 224), (64, 96), (37, 51), (32, 32)])
def test_feature_pyramid_any_input_size(s0: EfficientFormerV2, hw: tuple[int, int]) -> None:
    model = s0
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, *hw))
    assert [f.shape[1] for f in feats] == [32, 48, 96, 176]
    assert [tuple(f.shape[-2:]) for f in feats] == stage_resolutions(*hw)
    assert [info["stride"] for info in model.feature_info] == [4, 8, 16, 32]
    assert all(torch.isfinite(f).all() for f in feats)


def test_classifier_trains_on_odd_size() -> None:
    torch.manual_seed(0)
    model = efficientformer_v2(
        "efficientformerv2_s0",
        widths=(16, 24, 48, 64),
        depths=(1, 1, 2, 2),
        mlp_ratios=((4,), (4,), (4, 4), (4, 4)),
        num_attn=(0, 0, 1, 1),
        num_classes=5,
        in_chans=1,
        layer_scale_init=0.1,
    )
    x, y = torch.randn(4, 1, 45, 33), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    assert logits.shape == (4, 5)
    torch.nn.functional.cross_entropy(logits, y).backward()
    table = model.stages[3][-1].attn.pos_bias.table
    assert table.grad is not None and table.grad.abs().sum() > 0  # biases are learned at a non-native size


def test_relative_position_bias_native_and_resampled() -> None:
    bias = RelativePositionBias(num_heads=2, resolution=7)
    with torch.no_grad():
        bias.table.copy_(torch.randn(2, 7, 7))
    native = bias((7, 7), (7, 7))
    assert native.shape == (2, 49, 49)
    # query (1, 2) vs key (4, 6): |dy| = 3, |dx| = 4
    assert torch.equal(native[:, 1 * 7 + 2, 4 * 7 + 6], bias.table[:, 3, 4])
    # on a 13×13 grid the largest offset (12) maps onto the largest table entry (6)
    big = bias((13, 13), (13, 13))
    assert torch.allclose(big[:, 0, 13 * 13 - 1], bias.table[:, 6, 6])
    assert torch.allclose(big[:, 0, 0], bias.table[:, 0, 0])
    # downsampling queries sit on every second key cell
    down = bias((2, 2), (4, 4), q_stride=2)
    assert down.shape == (2, 4, 16)


def test_eval_bias_cache_matches_training_path() -> None:
    torch.manual_seed(0)
    attn = Attention4D(32, key_dim=8, num_heads=4, attn_ratio=2, bias_resolution=5, stride=2)
    with torch.no_grad():
        attn.pos_bias.table.normal_()
    x = torch.randn(1, 32, 9, 11)
    attn.eval()
    with torch.no_grad():
        first, second = attn(x), attn(x)
        assert len(attn.pos_bias._cache) == 1
        attn.pos_bias.train()
        fresh = attn(x)
    assert torch.equal(first, second) and torch.allclose(first, fresh)
    assert first.shape == x.shape


def test_config_errors_name_the_problem() -> None:
    base = EFFICIENTFORMER_V2_CONFIGS["efficientformerv2_s0"]
    with pytest.raises(EfficientFormerV2ConfigError, match="stage 2: depth 5"):
        replace(base, depths=(2, 2, 5, 4))
    with pytest.raises(EfficientFormerV2ConfigError, match="num_attn 3"):
        replace(base, num_attn=(0, 3, 2, 2))
    with pytest.raises(KeyError, match="efficientformerv2_xl"):
        efficientformer_v2("efficientformerv2_xl")
    with torch.device("meta"), pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        EfficientFormerV2().forward_features(torch.zeros(1, 1, 32, 32))


def test_against_timm_reference() -> None:
    usable, reason = _timm_usable()
    if not usable:
        pytest.skip(reason)
    import timm

    for name in ("efficientformerv2_s0", "efficientformerv2_s1"):
        ref = timm.create_model(name, pretrained=False, num_classes=1000)
        ours = efficientformer_v2(name, num_classes=1000, distillation_head=True)
        assert count_parameters(ours) == count_parameters(ref)
        x = torch.randn(1, 3, 224, 224)
        ref_feats = ref.eval().forward_intermediates(x, intermediates_only=True)
        ours_feats = ours.eval().forward_features(x)
        assert [f.shape for f in ours_feats] == [f.shape for f in ref_feats]
