"""PIM-aware quantization training (Jin et al. 2022): PIM-QAT, BN calibration and adjusted-precision training."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from stereovoxel_research.compress.pim_simulator import (
    PIMConfig,
    PIMError,
    configure_pim,
    convert_to_pim,
    pim_layers,
)

Method = Literal["conventional", "pim-qat"]
METHODS: tuple[str, ...] = ("conventional", "pim-qat")


def adjusted_adc_bits(adc_bits: int, noise_std_lsb: float) -> int:
    """The ADC resolution to train at so that training sees the chip's effective precision under noise.

    Thermal noise of σ LSB adds σ²Δ² to the quantization noise Δ²/12, i.e. the effective step grows by
    sqrt(1 + 12σ²); the effective number of bits is b - log2(sqrt(1 + 12σ²)), rounded, at least 1.
    """
    if adc_bits < 1 or noise_std_lsb < 0:
        raise PIMError(f"adjusted_adc_bits: adc_bits={adc_bits}, noise_std_lsb={noise_std_lsb}")
    lost = 0.5 * math.log2(1.0 + 12.0 * noise_std_lsb**2)
    return max(1, round(adc_bits - lost))


def prepare_for_training(
    model: nn.Module,
    config: PIMConfig,
    method: str,
    adjusted_precision_noise: float | None = None,
    exclude: Iterable[str] = (),
    rescale: str = "both",
) -> PIMConfig:
    """Convert ``model`` in place and set it up to train; returns the config used in training.

    ``conventional``: fake-quantized weights/activations on digital hardware (the PIM ADCs ignored).
    ``pim-qat``: forward through the simulated PIM macro, straight-through gradients, ``rescale`` one of
    ``none`` / ``forward`` / ``backward`` / ``both`` (the paper's method: both).
    ``adjusted_precision_noise`` (σ in LSB): train at :func:`adjusted_adc_bits` instead of ``config.adc_bits``.
    Training itself is noise-free; noise and non-linearity are properties of the deployment chip.
    """
    if method not in METHODS:
        raise PIMError(f"method={method!r}; choose from {', '.join(METHODS)}")
    train_config = config.with_(noise_std=0.0, adc_nonlinearity=0.0)
    if adjusted_precision_noise is not None:
        train_config = train_config.with_(
            adc_bits=adjusted_adc_bits(config.adc_bits, adjusted_precision_noise)
        )
    convert_to_pim(model, train_config, mode="digital", exclude=exclude)
    if method == "pim-qat":
        configure_pim(model, mode="pim", rescale=rescale)
    else:
        configure_pim(model, mode="digital", rescale="none")
    return train_config


def deploy_on_pim(model: nn.Module, chip: PIMConfig, seed: int = 0) -> None:
    """Run a converted model on the simulated chip (its ADC bits, range, non-linearity and noise)."""
    if not pim_layers(model):
        raise PIMError("deploy_on_pim: the model has no PIM layers; call convert_to_pim first")
    configure_pim(model, mode="pim", config=chip, seed=seed)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], max_batches: int = 20) -> int:
    """Re-estimate every BatchNorm's running statistics on the model as it now runs (e.g. on the noisy chip).

    Only BN layers are put in training mode (cumulative averages); quantizer ranges and rescaling gains stay
    frozen. Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise PIMError("calibrate_batchnorm: the model has no BatchNorm layers")
    was_training = model.training
    model.eval()
    saved = []
    for bn in bns:
        saved.append(bn.momentum)
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    used = 0
    try:
        for x in batches:
            if used >= max_batches:
                break
            model(x)
            used += 1
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise PIMError("calibrate_batchnorm: no batches given")
    return used
