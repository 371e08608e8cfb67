"""PIM simulator against hand-computed 2×2 crossbars, digital equivalence, STE gradients and PIM-QAT helpers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stereovoxel_research.compress.pim_qat import (
    adjusted_adc_bits,
    calibrate_batchnorm,
    prepare_for_training,
)
from stereovoxel_research.compress.pim_simulator import (
    SCHEMES,
    PIMConfig,
    PIMError,
    PIMLinear,
    adc_convert,
    configure_pim,
    convert_to_pim,
    pim_matmul,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see the root conftest.py


# A 2×2 crossbar: 2 rows (reduction), 2 columns (outputs); 3-bit weights (|w| <= 3), 2-bit unsigned acts (<= 3).
CROSSBAR = PIMConfig(rows=2, weight_bits=3, act_bits=2, adc_bits=2)
A = torch.tensor([[3.0, 1.0]])
W = torch.tensor([[1.0, 3.0], [-3.0, 1.0]])  # (outputs, rows); ideal products: [6, -8]


def test_native_2x2_crossbar_2bit_adc_by_hand():
    # Partial sums lie in ±2·3·3 = ±18 → signed 2-bit ADC: step 18/2 = 9, codes -2..1.
    # 6/9 = 0.67 → 1 → 9;  -8/9 = -0.89 → -1 → -9.
    assert pim_matmul(A, W, CROSSBAR, act_signed=False).tolist() == [[9.0, -9.0]]
    # Half range: step 4.5; 6/4.5 = 1.33 → 1 → 4.5; -8/4.5 = -1.78 → -2 → -9.
    assert pim_matmul(A, W, CROSSBAR.with_(adc_range=0.5), act_signed=False).tolist() == [[4.5, -9.0]]


def test_bit_serial_2x2_crossbar_2bit_adc_by_hand():
    # Activation bit planes: LSB [1, 1], MSB [1, 0]. Per cycle the sums lie in ±2·1·3 = ±6 → step 3.
    # LSB: [4, -2] → [1, -1] codes → [3, -3].  MSB: [1, -3] → [0, -1] → [0, -3].  3 + 2·0 = 3; -3 + 2·-3 = -9.
    cfg = CROSSBAR.with_(scheme="bit_serial")
    assert pim_matmul(A, W, cfg, act_signed=False).tolist() == [[3.0, -9.0]]


def test_bit_sliced_2x2_crossbar_2bit_adc_by_hand():
    # a = [3, 2], W = [[1, 2], [-3, 1]] (ideal [7, -7]); 1-bit slices of |w| in +/- columns; sums in [0, 2·3·1 = 6],
    # range 0.75 → unsigned ADC full scale 4.5, step 1.5, codes 0..3.
    # +LSB [[1,0],[0,1]]: [3, 2] → [2, 1] codes → [3, 1.5];  +MSB [[0,1],[0,0]]: [2, 0] → [1.5, 0]
    # -LSB [[0,0],[1,0]]: [0, 3] → [0, 3];                   -MSB [[0,0],[1,0]]: [0, 3] → [0, 3]
    # col0 = 3 + 2·1.5 = 6;  col1 = 1.5 + 0 - (3 + 2·3) = -7.5
    cfg = CROSSBAR.with_(scheme="bit_sliced", adc_range=0.75)
    a = torch.tensor([[3.0, 2.0]])
    w = torch.tensor([[1.0, 2.0], [-3.0, 1.0]])
    assert pim_matmul(a, w, cfg, act_signed=False).tolist() == [[6.0, -7.5]]


def test_row_groups_each_get_an_adc():
    # K = 4 over 2-row groups: each group's sum is converted separately, then added.
    a = torch.tensor([[3.0, 1.0, 3.0, 1.0]])
    w = torch.tensor([[1.0, 3.0, 1.0, 3.0]])
    assert pim_matmul(a, w, CROSSBAR, act_signed=False).tolist() == [[18.0]]  # 9 + 9 (ideal 12)


def test_adc_nonlinearity_and_noise():
    cfg = PIMConfig(adc_bits=16)
    p = torch.tensor([6.0])
    linear = adc_convert(p, -18, 18, cfg)
    bent = adc_convert(p, -18, 18, cfg.with_(adc_nonlinearity=2.0))
    assert abs(float(linear) - 6.0) < 1e-3
    assert abs(float(bent) - 18 * math.tanh(2 / 3) / math.tanh(2.0)) < 1e-3
    noisy = cfg.with_(adc_bits=4, noise_std=2.0)
    draws = [adc_convert(p, -18, 18, noisy, torch.Generator().manual_seed(s)) for s in range(20)]
    assert len({float(d) for d in draws}) > 2  # stochastic, several codes
    again = adc_convert(p, -18, 18, noisy, torch.Generator().manual_seed(3))
    assert float(again) == float(draws[3])  # reproducible with a seed


@pytest.mark.parametrize("scheme", SCHEMES)
def test_high_resolution_adc_equals_digital_quantization(scheme):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 5),
    )
    x = torch.randn(2, 3, 6, 6)  # signed input to the first layer
    names = convert_to_pim(model, PIMConfig(scheme=scheme, rows=7, slice_bits=2, adc_bits=24), mode="digital")
    assert names == ["0", "2", "4"]
    model.eval()
    digital = model(x)
    configure_pim(model, mode="pim")
    assert torch.allclose(model(x), digital, atol=1e-5)
    configure_pim(model, config=PIMConfig(scheme=scheme, rows=7, adc_bits=3))
    assert not torch.allclose(model(x), digital, atol=1e-3)  # a coarse ADC does change the result


def test_straight_through_gradients_flow_and_match_digital():
    torch.manual_seed(0)
    layer = PIMLinear.from_linear(nn.Linear(16, 4), PIMConfig(rows=4, adc_bits=3), mode="pim")
    x = torch.rand(8, 16, requires_grad=True)
    c = torch.randn(8, 4)  # a loss linear in the output: its gradient depends on the backward path only
    y_pim = layer(x)
    (y_pim * c).sum().backward()
    g_pim, gx_pim = layer.weight.grad.clone(), x.grad.clone()
    assert torch.isfinite(g_pim).all() and g_pim.abs().sum() > 0 and gx_pim.abs().sum() > 0
    layer.weight.grad, x.grad = None, None
    layer.mode = "digital"
    y_dig = layer(x)
    (y_dig * c).sum().backward()
    assert not torch.allclose(y_pim, y_dig)  # the 3-bit ADC changes the forward pass ...
    assert torch.allclose(layer.weight.grad, g_pim) and torch.allclose(x.grad, gx_pim)  # ... not the backward


def test_rescaling_gain_tracks_output_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8))
    prepare_for_training(model, PIMConfig(rows=64, adc_bits=2, adc_range=0.25), "pim-qat")
    model.train()
    for _ in range(30):
        model(torch.rand(32, 64))
    gain = float(model[0].pim_gain)
    assert gain != 1.0 and math.isfinite(gain)
    model.eval()  # frozen at deployment
    model(torch.rand(32, 64))
    assert float(model[0].pim_gain) == gain


def test_adjusted_precision_bits():
    assert adjusted_adc_bits(6, 0.0) == 6
    assert adjusted_adc_bits(6, 0.5) == 5  # sqrt(1 + 12·0.25) = 2 → one bit lost
    assert adjusted_adc_bits(2, 5.0) == 1
    with pytest.raises(PIMError):
        adjusted_adc_bits(4, -1.0)


def test_bn_calibration_reestimates_statistics_on_the_chip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    prepare_for_training(model, PIMConfig(rows=8, adc_bits=3, adc_range=0.5), "conventional")
    model.train()
    batches = [torch.randn(8, 2, 6, 6) for _ in range(4)]
    for x in batches:
        model(x)
    before = model[1].running_mean.clone()
    configure_pim(
        model, mode="pim", config=PIMConfig(rows=8, adc_bits=3, adc_range=0.5, noise_std=1.0), seed=0
    )
    model.eval()
    assert calibrate_batchnorm(model, iter(batches)) == 4
    assert not torch.allclose(model[1].running_mean, before)
    assert not model.training and not model[1].training


def test_config_errors_name_the_field():
    with pytest.raises(PIMError, match="scheme"):
        PIMConfig(scheme="analog")  # type: ignore[arg-type]
    with pytest.raises(PIMError, match="adc_range"):
        PIMConfig(adc_range=1.5)
    with pytest.raises(PIMError, match="exclude"):
        convert_to_pim(nn.Sequential(nn.Linear(2, 2)), PIMConfig(), exclude=["nope"])


@pytest.mark.parametrize("rescale", ["none", "forward", "backward", "both"])
def test_rescaling_modes_set_the_forward_gain_and_the_backward_slope(rescale):
    torch.manual_seed(0)
    layer = PIMLinear.from_linear(
        nn.Linear(64, 8, bias=False), PIMConfig(rows=64, adc_bits=2, adc_range=0.25)
    )
    configure_pim(layer, mode="pim", rescale=rescale)
    layer.train()
    x = torch.rand(64, 64)
    for _ in range(40):
        layer(x)  # the EMAs of the gain and the slope settle on this batch
    layer.eval()
    x.requires_grad_(True)
    y = layer(x)
    c = torch.randn_like(y)
    (y * c).sum().backward()
    g_pim = x.grad.clone()
    layer.mode = "digital"
    x.grad = None
    y_dig = layer(x)
    (y_dig * c).sum().backward()
    gain, slope = float(layer.pim_gain), float(layer.pim_slope)
    forward = gain if rescale in ("forward", "both") else 1.0
    backward = forward * slope if rescale in ("backward", "both") else 1.0
    layer.mode = "pim"
    with torch.no_grad():
        plain = PIMLinear.from_linear(
            nn.Linear(64, 8, bias=False), PIMConfig(rows=64, adc_bits=2, adc_range=0.25)
        )
        plain.load_state_dict(layer.state_dict())
        plain.eval()
        assert torch.allclose(y, forward * plain(x))  # forward: η × the raw PIM output
    assert torch.allclose(g_pim, backward * x.grad, rtol=1e-4, atol=1e-6)  # backward: STE × slope
    if rescale != "none":
        assert 0.2 < slope < 1.0 and gain * slope < 1.0  # a clipping 2-bit ADC shrinks the output


def test_backward_rescaling_with_both_is_the_correlation():
    torch.manual_seed(0)
    layer = PIMLinear.from_linear(
        nn.Linear(64, 8, bias=False), PIMConfig(rows=64, adc_bits=2, adc_range=0.25)
    )
    configure_pim(layer, mode="pim", rescale="both")
    layer.range_momentum = 1.0  # one batch sets the EMAs exactly
    layer.train()
    x = torch.rand(64, 64)
    y = layer(x).detach()  # after the update: gain and slope of this very batch
    layer.mode = "digital"
    d = layer(x).detach()
    p = y / float(layer.pim_gain)  # the raw PIM output
    rho = float((p * d).sum() / (d * d).sum()) * float(d.std() / p.std())  # slope × η
    assert math.isclose(float(layer.pim_gain * layer.pim_slope), rho, rel_tol=1e-4)
    with pytest.raises(PIMError, match="rescale"):
        configure_pim(layer, rescale="sideways")
