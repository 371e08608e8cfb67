"""PIM-QAT ablation: rescaling, BN calibration and adjusted precision on/off, per decomposition scheme and noise level.

Task: scikit-learn digits with the deeper digits CNN (:data:`PIM_DIGITS_WIDTHS`), every layer except the first
conv and the classifier on the simulated PIM macro, as in Jin et al. 2022. Seeds: ``seed`` trains (init and
batch order) and splits the data; noise draws use seeds 0..draws-1 and BN calibration batches 100 + draw; the
test split (never used to choose anything here) reports every figure.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from stereovoxel_research.compress.pim_qat import (
    calibrate_batchnorm,
    deploy_on_pim,
    prepare_for_training,
)
from stereovoxel_research.compress.pim_simulator import PIMConfig, PIMError, configure_pim, pim_layers
from stereovoxel_research.digits_task import (
    PIM_DIGITS_WIDTHS,
    DigitsCNN,
    DigitsCNNConfig,
    DigitsData,
    accuracy,
    load_digits_data,
    train_classifier,
)

EXCLUDED_LAYERS: tuple[str, ...] = ("features.0", "classifier")
"""First and last layers stay digital, every other conv runs on the PIM macro."""


@dataclass(frozen=True)
class TrainingVariant:
    """One way to train: ``method``, rescaling mode, and the noise σ adjusted precision targets (or None)."""

    method: str
    rescale: str
    adjusted_noise: float | None = None

    @property
    def name(self) -> str:
        if self.method == "conventional":
            return "conventional QAT"
        ap = f" + AP(σ={self.adjusted_noise:g})" if self.adjusted_noise is not None else ""
        return f"PIM-QAT rescale={self.rescale}{ap}"


def training_variants(noise_levels: Iterable[float]) -> list[TrainingVariant]:
    """Conventional QAT; PIM-QAT with each rescaling mode; PIM-QAT (both) with adjusted precision per σ > 0."""
    out = [TrainingVariant("conventional", "none")]
    out += [TrainingVariant("pim-qat", r) for r in ("none", "forward", "backward", "both")]
    out += [TrainingVariant("pim-qat", "both", s) for s in noise_levels if s > 0]
    return out


def _train(variant: TrainingVariant, chip: PIMConfig, data: DigitsData, epochs: int, seed: int):
    torch.manual_seed(seed)
    model = DigitsCNN(DigitsCNNConfig(widths=PIM_DIGITS_WIDTHS))
    train_cfg = prepare_for_training(
        model, chip, variant.method, variant.adjusted_noise, EXCLUDED_LAYERS, rescale=variant.rescale
    )
    train_classifier(model, data, epochs, seed=seed)
    return model, train_cfg


def evaluate_on_chip(
    model: torch.nn.Module,
    chip: PIMConfig,
    rescale: str,
    data: DigitsData,
    noise: float,
    bn_calibration: bool,
    draws: int,
) -> tuple[float, float]:
    """Mean and spread of test accuracy over noise draws (one draw when σ = 0) on the chip with noise σ."""
    accs = []
    for draw in range(draws if noise > 0 else 1):
        m = copy.deepcopy(model)
        deploy_on_pim(m, chip.with_(noise_std=noise), seed=draw)
        configure_pim(m, rescale=rescale)
        if bn_calibration:
            gen = torch.Generator().manual_seed(100 + draw)
            calibrate_batchnorm(m, (x for x, _ in data.batches(64, gen)))
        accs.append(accuracy(m, data))
    return statistics.fmean(accs), statistics.pstdev(accs)


def run_ablation(
    chip: PIMConfig,
    schemes: Iterable[str],
    noise_levels: Iterable[float],
    epochs: int,
    draws: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Train every variant per scheme, evaluate on the chip at every noise level with and without BN calibration.

    Rows: scheme, training, rescale, adjusted_precision, train_adc_bits, noise_lsb, bn_calibration, accuracy,
    accuracy_std, draws; plus one ``digital`` row per scheme (conventional QAT on digital hardware).
    """
    noise_levels = tuple(noise_levels)
    if not noise_levels or any(s < 0 for s in noise_levels):
        raise PIMError(f"noise levels {noise_levels} must be a non-empty list of values >= 0")
    data = load_digits_data(seed=seed)
    rows: list[dict] = []
    for scheme in schemes:
        scheme_chip = chip.with_(scheme=scheme)
        for variant in training_variants(noise_levels):
            if progress:
                progress(f"{scheme}: {variant.name}")
            model, train_cfg = _train(variant, scheme_chip, data, epochs, seed)
            base = {
                "scheme": scheme,
                "training": variant.name,
                "rescale": variant.rescale,
                "adjusted_precision": variant.adjusted_noise is not None,
                "train_adc_bits": train_cfg.adc_bits,
                "layers_on_pim": len(pim_layers(model)),
            }
            if variant.method == "conventional":
                configure_pim(model, mode="digital")
                rows.append({**base, "deploy": "digital", "noise_lsb": 0.0, "bn_calibration": False,
                             "accuracy": accuracy(model, data), "accuracy_std": 0.0, "draws": 1})  # fmt: skip
            levels = noise_levels if variant.adjusted_noise is None else (variant.adjusted_noise,)
            for noise in levels:
                for bn in (False, True):
                    acc, std = evaluate_on_chip(model, scheme_chip, variant.rescale, data, noise, bn, draws)
                    rows.append({**base, "deploy": "pim", "noise_lsb": noise, "bn_calibration": bn,
                                 "accuracy": acc, "accuracy_std": std, "draws": draws if noise > 0 else 1})  # fmt: skip
    return rows


def ablation_table(rows: list[dict]) -> str:
    """Markdown: one line per (scheme, training), one column per (σ, BN calibration off/on)."""
    noises = sorted({r["noise_lsb"] for r in rows if r["deploy"] == "pim"})
    headers = ["scheme", "training", "train ADC bits", "digital"]
    headers += [f"σ={s:g} {'+BN cal.' if bn else 'no BN cal.'}" for s in noises for bn in (False, True)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    keys = list(dict.fromkeys((r["scheme"], r["training"]) for r in rows))
    for scheme, training in keys:
        mine = [r for r in rows if r["scheme"] == scheme and r["training"] == training]
        digital = next((r for r in mine if r["deploy"] == "digital"), None)
        cells = [
            scheme,
            training,
            str(mine[0]["train_adc_bits"]),
            f"{digital['accuracy']:.3f}" if digital else "",
        ]
        for s in noises:
            for bn in (False, True):
                hit = [
                    r
                    for r in mine
                    if r["deploy"] == "pim" and r["noise_lsb"] == s and r["bn_calibration"] == bn
                ]
                cells.append(f"{hit[0]['accuracy']:.3f} ± {hit[0]['accuracy_std']:.3f}" if hit else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_findings(rows: list[dict]) -> list[str]:
    """Tested statements from the rows, each with its numbers (held or not)."""
    out = []

    def acc(scheme: str, training: str, noise: float, bn: bool) -> float | None:
        hit = [r["accuracy"] for r in rows if r["scheme"] == scheme and r["training"] == training
               and r["deploy"] == "pim" and r["noise_lsb"] == noise and r["bn_calibration"] == bn]  # fmt: skip
        return hit[0] if hit else None

    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        digital = [r["accuracy"] for r in rows if r["scheme"] == scheme and r["deploy"] == "digital"]
        if not digital:
            continue
        for noise in sorted({r["noise_lsb"] for r in rows if r["scheme"] == scheme and r["deploy"] == "pim"}):
            plain = acc(scheme, "conventional QAT", noise, False)
            cal = acc(scheme, "conventional QAT", noise, True)
            qat = acc(scheme, "PIM-QAT rescale=both", noise, False)
            qat_cal = acc(scheme, "PIM-QAT rescale=both", noise, True)
            if plain is None or cal is None:
                continue
            lost = digital[0] - plain
            share = (cal - plain) / lost if lost > 1e-9 else float("nan")
            verdict = "holds" if share >= 0.5 else "does not hold"
            out.append(
                f"{scheme}, σ={noise:g}: 'BN calibration alone recovers most of what conventional QAT loses' "
                f"{verdict}: digital {digital[0]:.3f}, on chip {plain:.3f}, +BN cal. {cal:.3f} "
                f"({100 * share:.0f}% of the loss recovered)"
            )
            if qat is not None and qat_cal is not None:
                best = max(qat, qat_cal)
                out.append(
                    f"{scheme}, σ={noise:g}: PIM-QAT (rescale both) {qat:.3f}, +BN cal. {qat_cal:.3f}; "
                    f"best PIM-QAT - best conventional = {best - max(plain, cal):+.3f}"
                )
    return out
