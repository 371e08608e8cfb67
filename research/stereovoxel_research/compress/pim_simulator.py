"""Processing-in-memory (PIM) simulator: crossbar row groups, limited ADCs and drop-in PIM conv/linear layers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Scheme = Literal["native", "bit_serial", "bit_sliced"]
Mode = Literal["float", "digital", "pim"]
Rescale = Literal["none", "forward", "backward", "both"]
SCHEMES: tuple[str, ...] = ("native", "bit_serial", "bit_sliced")
MODES: tuple[str, ...] = ("float", "digital", "pim")
RESCALES: tuple[str, ...] = ("none", "forward", "backward", "both")


class PIMError(ValueError):
    """An invalid PIM configuration or an unsupported layer; the message names the field or layer."""


@dataclass(frozen=True)
class PIMConfig:
    """One PIM macro. Integer partial sums of ``rows`` consecutive reduction elements meet one ADC each.

    ``scheme``: ``native`` (multi-bit weights and activations in analog), ``bit_serial`` (activations fed
    ``slice_bits`` bits per cycle), ``bit_sliced`` (weights stored as ``slice_bits``-bit slices in
    differential +/- columns). ``adc_range`` is the ADC full scale as a fraction of the largest possible
    partial sum; ``adc_nonlinearity`` the strength κ of a tanh-shaped transfer (0 = linear);
    ``noise_std`` the thermal noise before the ADC [ADC LSB].
    """

    scheme: Scheme = "native"
    weight_bits: int = 4
    act_bits: int = 4
    rows: int = 64
    slice_bits: int = 1
    adc_bits: int = 5
    adc_range: float = 1.0
    adc_nonlinearity: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise PIMError(f"PIMConfig.scheme={self.scheme!r}; choose from {', '.join(SCHEMES)}")
        for name, low in (
            ("weight_bits", 2),
            ("act_bits", 2),
            ("rows", 1),
            ("slice_bits", 1),
            ("adc_bits", 1),
        ):
            if int(getattr(self, name)) < low:
                raise PIMError(f"PIMConfig.{name}={getattr(self, name)} must be >= {low}")
        if not 0.0 < self.adc_range <= 1.0:
            raise PIMError(f"PIMConfig.adc_range={self.adc_range} must be in (0, 1]")
        if self.adc_nonlinearity < 0.0 or self.noise_std < 0.0:
            raise PIMError("PIMConfig.adc_nonlinearity and noise_std must be >= 0")

    def with_(self, **changes: object) -> PIMConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


def weight_levels(bits: int) -> int:
    """Largest magnitude of a symmetric signed ``bits``-bit weight (2^(b-1) - 1)."""
    return 2 ** (bits - 1) - 1


def act_levels(bits: int, signed: bool) -> int:
    """Largest magnitude of a ``bits``-bit activation: 2^b - 1 unsigned, 2^(b-1) - 1 signed."""
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def _slices(values: torch.Tensor, magnitude_bits: int, slice_bits: int) -> list[tuple[float, torch.Tensor]]:
    """Signed integers -> (coefficient, unsigned slice) pairs: +/- parts, each cut into ``slice_bits`` slices."""
    out: list[tuple[float, torch.Tensor]] = []
    for sign, part in ((1.0, values.clamp(min=0)), (-1.0, (-values).clamp(min=0))):
        if not bool(part.any()):
            continue
        for j in range(math.ceil(magnitude_bits / slice_bits)):
            shift = 2 ** (slice_bits * j)
            plane = torch.remainder(torch.div(part, shift, rounding_mode="floor"), 2**slice_bits)
            out.append((sign * shift, plane))
    return out


def adc_convert(
    partial: torch.Tensor,
    lo: float,
    hi: float,
    config: PIMConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One ADC per partial sum whose ideal range is [lo, hi]; returns the digital value in partial-sum units.

    Signed ranges use a two's-complement ADC (codes -2^(b-1) .. 2^(b-1)-1, step R / 2^(b-1), R = max(-lo, hi)
    × adc_range); non-negative ranges an unsigned one (codes 0 .. 2^b-1, step R / (2^b - 1), R = hi × adc_range).
    Noise (σ in LSB) is added before the transfer curve p → R·tanh(κ p/R)/tanh(κ), then rounding and clipping.
    """
    bits = config.adc_bits
    if lo < 0:
        full = max(-lo, hi) * config.adc_range
        step = full / 2 ** (bits - 1)
        code_lo, code_hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        full = hi * config.adc_range
        step = full / (2**bits - 1)
        code_lo, code_hi = 0, 2**bits - 1
    analog = partial
    if config.noise_std > 0:
        noise = torch.randn(partial.shape, generator=generator, dtype=partial.dtype, device=partial.device)
        analog = analog + noise * (config.noise_std * step)
    if config.adc_nonlinearity > 0:
        k = config.adc_nonlinearity
        analog = full * torch.tanh(k * analog / full) / math.tanh(k)
    return torch.clamp(torch.round(analog / step), code_lo, code_hi) * step


def pim_matmul(
    a_int: torch.Tensor,
    w_int: torch.Tensor,
    config: PIMConfig,
    act_signed: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integer activations (N, K) × integer weights (O, K) on the PIM macro -> (N, O) after shift-and-add.

    The reduction dimension K is cut into ceil(K / rows) row groups; every (group, activation cycle, weight
    slice) partial sum passes its own ADC; digital shift-and-add recombines them.
    """
    if a_int.dim() != 2 or w_int.dim() != 2 or a_int.shape[1] != w_int.shape[1]:
        raise PIMError(f"pim_matmul: shapes {tuple(a_int.shape)} x {tuple(w_int.shape)}^T do not match")
    n, k = a_int.shape
    rows = config.rows
    groups = math.ceil(k / rows)
    pad = groups * rows - k
    a = F.pad(a_int, (0, pad)).reshape(n, groups, rows)
    w = F.pad(w_int, (0, pad)).reshape(w_int.shape[0], groups, rows)
    qa = act_levels(config.act_bits, act_signed)
    qw = weight_levels(config.weight_bits)
    slice_max = 2**config.slice_bits - 1
    if config.scheme == "bit_serial":
        a_parts = _slices(a, config.act_bits - (1 if act_signed else 0), config.slice_bits)
        a_lo, a_hi = 0, slice_max
    else:
        a_parts = [(1.0, a)]
        a_lo, a_hi = (-qa if act_signed else 0), qa
    if config.scheme == "bit_sliced":
        w_parts = _slices(w, config.weight_bits - 1, config.slice_bits)
        w_lo, w_hi = 0, slice_max
    else:
        w_parts = [(1.0, w)]
        w_lo, w_hi = -qw, qw
    corners = [a_lo * w_lo, a_lo * w_hi, a_hi * w_lo, a_hi * w_hi]
    lo, hi = rows * min(corners), rows * max(corners)
    out = a_int.new_zeros(n, w_int.shape[0])
    for ca, a_plane in a_parts:
        for cw, w_plane in w_parts:
            partial = torch.einsum("ngr,ogr->ngo", a_plane, w_plane)  # analog column currents
            out += (ca * cw) * adc_convert(partial, lo, hi, config, generator).sum(dim=1)
    return out


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through (identity) gradient."""
    return _RoundSTE.apply(x)


class PIMLayerMixin:
    """Quantizers, activation-range tracking and the PIM forward shared by :class:`PIMConv2d` and :class:`PIMLinear`.

    Modes: ``float`` (the original layer), ``digital`` (conventional fake-quantized weights and activations),
    ``pim`` (the simulated macro; straight-through gradients of the digital path, see :meth:`_combine`).
    """

    pim_config: PIMConfig
    mode: str
    rescale: str
    range_momentum: float = 0.1
    weight: torch.Tensor
    bias: torch.Tensor | None
    training: bool

    @classmethod
    def _adopt(cls, module: nn.Module, config: PIMConfig, mode: str):
        """An instance of ``cls`` that shares ``module``'s parameters, buffers and settings."""
        new = cls.__new__(cls)
        new.__dict__ = module.__dict__.copy()
        new._parameters = dict(module._parameters)
        new._buffers = dict(module._buffers)
        new._modules = dict(module._modules)
        new._init_pim(config, mode)
        return new

    def _init_pim(self, config: PIMConfig, mode: str = "pim") -> None:
        self.pim_config = config
        self.mode = mode
        self.rescale = "none"
        self.generator: torch.Generator | None = None
        self.register_buffer("act_lo", torch.tensor(0.0))  # type: ignore[attr-defined]
        self.register_buffer("act_hi", torch.tensor(0.0))  # type: ignore[attr-defined]
        self.register_buffer("range_seen", torch.tensor(False))  # type: ignore[attr-defined]
        self.register_buffer("pim_gain", torch.tensor(1.0))  # type: ignore[attr-defined]
        self.register_buffer("pim_slope", torch.tensor(1.0))  # type: ignore[attr-defined]

    def _track_range(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min(), x.detach().max()
        if not bool(self.range_seen):
            self.act_lo.copy_(lo)  # type: ignore[attr-defined]
            self.act_hi.copy_(hi)  # type: ignore[attr-defined]
            self.range_seen.fill_(True)  # type: ignore[attr-defined]
        else:
            m = self.range_momentum
            self.act_lo.mul_(1 - m).add_(m * lo)  # type: ignore[attr-defined]
            self.act_hi.mul_(1 - m).add_(m * hi)  # type: ignore[attr-defined]

    def quantize_activation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """x -> (integer levels with STE, scale, signed); the range is an EMA of batch min/max in training."""
        if self.training or not bool(self.range_seen):  # type: ignore[attr-defined]
            self._track_range(x)
        lo, hi = float(self.act_lo), float(self.act_hi)  # type: ignore[attr-defined]
        signed = lo < 0
        q = act_levels(self.pim_config.act_bits, signed)
        scale = torch.tensor(max(max(abs(lo), abs(hi)) / q, 1e-8), dtype=x.dtype, device=x.device)
        levels = round_ste(torch.clamp(x / scale, -q if signed else 0, q))
        return levels, scale, signed

    def quantize_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight -> (integer levels with STE, per-output-channel scale of shape (O,))."""
        q = weight_levels(self.pim_config.weight_bits)
        w = self.weight
        scale = w.detach().reshape(w.shape[0], -1).abs().amax(dim=1).clamp(min=1e-8) / q
        shape = (-1,) + (1,) * (w.dim() - 1)
        return round_ste(torch.clamp(w / scale.view(shape), -q, q)), scale

    def _quantized_forward(
        self,
        x: torch.Tensor,
        digital: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        on_macro: Callable[[torch.Tensor, torch.Tensor, bool, torch.Size], torch.Tensor],
        channel_shape: tuple[int, ...],
    ) -> torch.Tensor:
        """The ``digital`` and ``pim`` modes: ``digital(a_int, w_int)`` is the exact integer op; in ``pim`` mode
        ``on_macro(a_int, w_int, signed, out_shape)`` (the simulated macro, no gradient) is combined with it.
        Scales and bias apply per output channel, viewed as ``channel_shape``."""
        a_int, a_scale, signed = self.quantize_activation(x)
        w_int, w_scale = self.quantize_weight()
        scale = (a_scale * w_scale).view(channel_shape)
        y = digital(a_int, w_int) * scale
        if self.mode == "pim":
            with torch.no_grad():
                y_pim = on_macro(a_int.detach(), w_int.detach(), signed, y.shape)
            y = self._combine(y, y_pim * scale)
        return y if self.bias is None else y + self.bias.view(channel_shape)

    def _combine(self, y_digital: torch.Tensor, y_pim: torch.Tensor) -> torch.Tensor:
        """Forward: the PIM output (× η with forward rescaling); backward: straight through to the digital path.

        PIM-QAT (Jin et al. 2022) rescales in both directions. Forward: η = std(digital)/std(PIM) (EMA in
        training) so the next layer sees the variance the digital path would give. Backward (our reading):
        the straight-through gradient is scaled by the least-squares slope s of the forward output on the
        digital output, i.e. it is the gradient of the best linear model of what the forward pass computes
        (s = ζ with ζ = <PIM, digital>/<digital, digital> alone, η·ζ = the correlation with both on; plain STE
        assumes 1). Rescaling modes: ``none``, ``forward``, ``backward``, ``both``.
        """
        if self.rescale != "none" and self.training:
            m = self.range_momentum
            d, p = y_digital.detach(), y_pim.detach()
            ratio = d.std() / p.std().clamp(min=1e-8)
            slope = (p * d).sum() / (d * d).sum().clamp(min=1e-12)
            self.pim_gain.mul_(1 - m).add_(m * ratio)  # type: ignore[attr-defined]
            self.pim_slope.mul_(1 - m).add_(m * slope)  # type: ignore[attr-defined]
        forward = self.rescale in ("forward", "both")
        gain = self.pim_gain if forward else 1.0  # type: ignore[attr-defined]
        out = gain * y_pim
        if self.rescale in ("backward", "both"):
            back = gain * self.pim_slope  # type: ignore[attr-defined]
            return back * y_digital + (out - back * y_digital).detach()
        return y_digital + (out - y_digital).detach()


class PIMConv2d(PIMLayerMixin, nn.Conv2d):
    """Drop-in ``nn.Conv2d`` computed on the simulated PIM macro (zero padding only)."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, config: PIMConfig, mode: str = "pim") -> PIMConv2d:
        """Wrap an existing conv, sharing its parameters."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise PIMError(
                f"PIMConv2d: padding={conv.padding!r} padding_mode={conv.padding_mode!r} unsupported"
            )
        return cls._adopt(conv, config, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return super().forward(x)

        def digital(a_int: torch.Tensor, w_int: torch.Tensor) -> torch.Tensor:
            return F.conv2d(a_int, w_int, None, self.stride, self.padding, self.dilation, self.groups)

        return self._quantized_forward(x, digital, self._pim_conv, (1, -1, 1, 1))

    def _pim_conv(
        self, a_int: torch.Tensor, w_int: torch.Tensor, signed: bool, out_shape: torch.Size
    ) -> torch.Tensor:
        b, _, h_out, w_out = out_shape
        cols = F.unfold(a_int, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, C*kh*kw, L)
        per_group_in = cols.shape[1] // self.groups
        per_group_out = self.out_channels // self.groups
        outs = []
        for g in range(self.groups):
            a = cols[:, g * per_group_in : (g + 1) * per_group_in].transpose(1, 2).reshape(-1, per_group_in)
            w = w_int[g * per_group_out : (g + 1) * per_group_out].reshape(per_group_out, -1)
            outs.append(pim_matmul(a, w, self.pim_config, signed, self.generator))
        y = torch.cat(outs, dim=1)  # (B*L, O)
        return y.reshape(b, h_out * w_out, -1).transpose(1, 2).reshape(b, -1, h_out, w_out)


class PIMLinear(PIMLayerMixin, nn.Linear):
    """Drop-in ``nn.Linear`` computed on the simulated PIM macro."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: PIMConfig, mode: str = "pim") -> PIMLinear:
        """Wrap an existing linear layer, sharing its parameters."""
        return cls._adopt(linear, config, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return super().forward(x)
        return self._quantized_forward(x, F.linear, self._pim_linear, (-1,))

    def _pim_linear(
        self, a_int: torch.Tensor, w_int: torch.Tensor, signed: bool, out_shape: torch.Size
    ) -> torch.Tensor:
        flat = a_int.reshape(-1, self.in_features)
        return pim_matmul(flat, w_int, self.pim_config, signed, self.generator).reshape(out_shape)


def convert_to_pim(
    model: nn.Module, config: PIMConfig, mode: str = "pim", exclude: Iterable[str] = ()
) -> list[str]:
    """Replace every ``nn.Conv2d``/``nn.Linear`` in ``model`` (in place) by its PIM twin; returns the names.

    ``exclude`` holds module names kept as they are (e.g. a first layer kept digital). Parameters are shared,
    so a state dict saved before conversion loads into the converted model with ``strict=False``.
    """
    if mode not in MODES:
        raise PIMError(f"mode={mode!r}; choose from {', '.join(MODES)}")
    skip = set(exclude)
    converted: list[str] = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if full in skip or isinstance(child, PIMLayerMixin):
                continue
            if type(child) is nn.Conv2d:
                setattr(module, child_name, PIMConv2d.from_conv(child, config, mode))
            elif type(child) is nn.Linear:
                setattr(module, child_name, PIMLinear.from_linear(child, config, mode))
            else:
                continue
            converted.append(full)
    unknown = skip - {n for n, _ in model.named_modules()}
    if unknown:
        raise PIMError(f"convert_to_pim: exclude names not in the model: {sorted(unknown)}")
    return converted


def pim_layers(model: nn.Module) -> list[PIMLayerMixin]:
    """All PIM layers of ``model`` in module order."""
    return [m for m in model.modules() if isinstance(m, PIMLayerMixin)]


def configure_pim(
    model: nn.Module,
    mode: str | None = None,
    config: PIMConfig | None = None,
    rescale: str | bool | None = None,
    seed: int | None = None,
) -> None:
    """Set mode / config / rescaling on every PIM layer; ``seed`` makes the thermal noise reproducible.

    ``rescale``: one of :data:`RESCALES` (``True`` = ``both``, ``False`` = ``none``).
    """
    if mode is not None and mode not in MODES:
        raise PIMError(f"mode={mode!r}; choose from {', '.join(MODES)}")
    if isinstance(rescale, bool):
        rescale = "both" if rescale else "none"
    if rescale is not None and rescale not in RESCALES:
        raise PIMError(f"rescale={rescale!r}; choose from {', '.join(RESCALES)}")
    for i, layer in enumerate(pim_layers(model)):
        if mode is not None:
            layer.mode = mode
        if config is not None:
            layer.pim_config = config
        if rescale is not None:
            layer.rescale = rescale
        if seed is not None:
            layer.generator = torch.Generator(device=layer.weight.device).manual_seed(seed + i)
