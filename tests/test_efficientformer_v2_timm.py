"""EfficientFormerV2 state-dict names and shapes against timm's ``efficientformerv2_*``, and the StereoVoxelNet
extractor with attention that loads them.

timm needs torchvision, which the pinned environment lacks, so the reference below is transcribed from timm's
constructor (huggingface/pytorch-image-models, timm/models/efficientformer_v2.py: Stem4, EfficientFormerV2Stage,
Downsample, Attention2d(Downsample), ConvMlpWithNorm, LayerScale2d, norm/head/head_dist) independently of the
renaming rules under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from stereovoxel_ros.core.models.efficientformer_v2 import EFFICIENTFORMER_V2_CONFIGS, efficientformer_v2
from stereovoxel_ros.core.models.efficientformer_v2_extractor import (
    EfficientFormerV2Extractor,
    TimmMappingError,
    from_timm_state_dict,
    load_timm_weights,
    to_timm_names,
)

TIMM_NUM_VIT = {"efficientformerv2_s0": 2, "efficientformerv2_s1": 2, "efficientformerv2_s2": 4}


def _timm_reference(variant: str, num_classes: int = 1000, img: int = 224) -> dict[str, tuple[int, ...]]:
    """timm's state-dict name → shape for ``variant`` (see the module docstring)."""
    cfg = EFFICIENTFORMER_V2_CONFIGS[variant]
    ref: dict[str, tuple[int, ...]] = {}

    def conv_norm(prefix: str, cin: int, cout: int, k: int = 1, groups: int = 1) -> None:
        ref[f"{prefix}.conv.weight"] = (cout, cin // groups, k, k)
        ref[f"{prefix}.conv.bias"] = (cout,)
        for n in ("weight", "bias", "running_mean", "running_var"):
            ref[f"{prefix}.bn.{n}"] = (cout,)
        ref[f"{prefix}.bn.num_batches_tracked"] = ()

    w = cfg.widths
    conv_norm("stem.conv1", 3, w[0] // 2, 3)
    conv_norm("stem.conv2", w[0] // 2, w[0], 3)
    stride, prev = 4, w[0]
    for i, (dim, depth) in enumerate(zip(w, cfg.depths)):
        res = math.ceil(img / stride)
        s = f"stages.{i}"
        if i > 0:
            conv_norm(f"{s}.downsample.conv", prev, dim, 3)
            if i >= 3:  # Attention2dDownsample: key_dim 16, 8 heads, attn_ratio 4
                a = f"{s}.downsample.attn"
                ref[f"{a}.q.local.weight"], ref[f"{a}.q.local.bias"] = (prev, 1, 3, 3), (prev,)
                conv_norm(f"{a}.q.proj", prev, 128)
                conv_norm(f"{a}.k", prev, 128)
                conv_norm(f"{a}.v", prev, 512)
                conv_norm(f"{a}.v_local", 512, 512, 3, 512)
                conv_norm(f"{a}.proj", 512, dim)
                ref[f"{a}.attention_biases"] = (8, res * res)
            res, stride = math.ceil(res / 2), stride * 2
        num_vit = TIMM_NUM_VIT[variant]
        for j in range(depth):
            b = f"{s}.blocks.{j}"
            if i >= 2 and j > depth - num_vit - 1:  # Attention2d: key_dim 32, 8 heads, attn_ratio 4
                t = f"{b}.token_mixer"
                r = res
                if i == 2:
                    conv_norm(f"{t}.stride_conv", dim, dim, 3, dim)
                    r = math.ceil(res / 2)
                conv_norm(f"{t}.q", dim, 256)
                conv_norm(f"{t}.k", dim, 256)
                conv_norm(f"{t}.v", dim, 1024)
                conv_norm(f"{t}.v_local", 1024, 1024, 3, 1024)
                for h in ("talking_head1", "talking_head2"):
                    ref[f"{t}.{h}.weight"], ref[f"{t}.{h}.bias"] = (8, 8, 1, 1), (8,)
                conv_norm(f"{t}.proj", 1024, dim)
                ref[f"{t}.attention_biases"] = (8, r * r)
                ref[f"{b}.ls1.gamma"] = (dim,)
            hidden = int(dim * cfg.mlp_ratios[i][j])
            conv_norm(f"{b}.mlp.fc1", dim, hidden)
            conv_norm(f"{b}.mlp.mid", hidden, hidden, 3, hidden)
            conv_norm(f"{b}.mlp.fc2", hidden, dim)
            ref[f"{b}.ls2.gamma"] = (dim,)
        prev = dim
    for n in ("weight", "bias", "running_mean", "running_var"):
        ref[f"norm.{n}"] = (w[-1],)
    ref["norm.num_batches_tracked"] = ()
    for h in ("head", "head_dist"):
        ref[f"{h}.weight"], ref[f"{h}.bias"] = (num_classes, w[-1]), (num_classes,)
    return ref


@pytest.mark.parametrize("variant", ["efficientformerv2_s0", "efficientformerv2_s1", "efficientformerv2_s2"])
def test_every_name_and_shape_maps_onto_timm(variant: str) -> None:
    model = efficientformer_v2(variant, num_classes=1000, distillation_head=True)
    mapped = to_timm_names(model.state_dict())
    reference = _timm_reference(variant)
    assert sorted(set(reference) - set(mapped)) == [] and sorted(set(mapped) - set(reference)) == []
    assert {k: v for k, v in mapped.items() if reference[k] != v} == {}


def _fake_timm_weights(variant: str) -> dict[str, torch.Tensor]:
    """Random tensors of timm's shapes, small enough that 20 blocks stay finite (positive BN variances)."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for k, shape in _timm_reference(variant).items():
        value = 0.05 * torch.randn(shape, generator=gen) if shape else torch.tensor(0)
        if k.endswith("running_var"):
            value = value.abs() + 1.0
        out[k] = value
    return out


def test_extractor_with_attention_loads_timm_weights() -> None:
    extractor = EfficientFormerV2Extractor("efficientformerv2_s0", 24, num_stages=3)
    assert any("attn" in n for n, _ in extractor.named_modules())  # stage 3's last blocks attend
    timm = _fake_timm_weights("efficientformerv2_s0")
    loaded = load_timm_weights(extractor, timm)
    assert loaded == sum(1 for k in extractor.state_dict() if not k.startswith("laterals."))
    state = extractor.state_dict()
    bias = state["stages.2.5.attn.pos_bias.table"]
    assert bias.shape == (8, 7, 7)
    torch.testing.assert_close(bias.flatten(1), timm["stages.2.blocks.5.token_mixer.attention_biases"])
    torch.testing.assert_close(state["stages.0.1.ls.gamma"].flatten(), timm["stages.0.blocks.1.ls2.gamma"])
    torch.testing.assert_close(state["stem.0.0.weight"], timm["stem.conv1.conv.weight"])
    out = extractor.eval()(torch.randn(2, 3, 128, 256))
    assert out.shape == (2, 24, 32, 64) and torch.isfinite(out).all()

    bad = dict(timm)
    bad["stages.1.blocks.0.mlp.fc1.conv.weight"] = torch.zeros(7, 48, 1, 1)
    del bad["stages.2.blocks.4.token_mixer.q.conv.weight"]
    with pytest.raises(TimmMappingError, match=r"stages\.2\.blocks\.4\.token_mixer\.q\.conv\.weight") as info:
        from_timm_state_dict(extractor.state_dict(), bad)
    assert "stages.1.blocks.0.mlp.fc1.conv.weight (7, 48, 1, 1)" in str(info.value)


def test_stereovoxelnet_with_the_attention_extractor_runs() -> None:
    from stereovoxel_ros.core.models.stereovoxelnet import StereoVoxelNetError, create_stereovoxelnet

    model = create_stereovoxelnet("stereovoxelnet_effv2_attn").eval()
    assert model.config.extractor_stages == 3 and len(model.extractor.stages) == 3
    left = torch.rand(1, 3, 128, 256)
    camera = torch.tensor([[131.0, 131.0, 127.5, 63.5, 0.12]])
    with torch.no_grad():
        levels = model(left, left.roll(-2, dims=-1), camera)
    assert torch.isfinite(levels[-1]).all()
    with pytest.raises(StereoVoxelNetError, match="extractor_stages"):
        create_stereovoxelnet("stereovoxelnet_effv2_attn", extractor_stages=4)
