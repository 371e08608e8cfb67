"""``stereovoxel compress``: PIM-QAT (pim-qat train/eval), All-in-One pruning (all-in-one train/eval/dvfs), wrap-check."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

DEFAULT_RESULTS = "outputs/compress"


class CompressCommandError(RuntimeError):
    """A compress command cannot run (bad checkpoint, option); the message names it."""


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add ``compress`` and its sub-subcommands."""
    p = subparsers.add_parser(
        name,
        help=help,
        description="Compression for the robot's hardware: PIM-aware quantization and All-in-One pruning. "
        "Task: scikit-learn digits with a small CNN (minutes on a CPU).",
    )
    from stereovoxel_research.compress.pim_commands import (
        _chip_arguments,
        _pim_ablate,
        _pim_eval,
        _pim_train,
    )

    sub = p.add_subparsers(dest="compress_command", metavar="METHOD", required=True)

    pim = sub.add_parser("pim-qat", help="PIM-aware quantization training (Jin et al. 2022)")
    pim_sub = pim.add_subparsers(dest="pim_command", metavar="STEP", required=True)
    t = pim_sub.add_parser("train", help="train a quantized digits CNN, conventionally or through the PIM")
    t.add_argument("--method", choices=("conventional", "pim-qat"), required=True)
    t.add_argument(
        "--adjusted-precision-noise",
        type=float,
        default=None,
        metavar="SIGMA",
        help="train at the ADC's effective bits under this thermal noise [LSB]",
    )
    t.add_argument(
        "--rescale",
        choices=("none", "forward", "backward", "both"),
        default="both",
        help="PIM-QAT rescaling (the paper: both)",
    )
    _chip_arguments(t)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, required=True, help="checkpoint [.pt]")
    t.set_defaults(func=_pim_train, _parser=t, _prefix="stereovoxel compress pim-qat train")
    a = pim_sub.add_parser(
        "ablate",
        help="rescaling / BN calibration / adjusted precision on and off, per scheme and noise level",
    )
    a.add_argument("--schemes", default="native,bit_serial,bit_sliced")
    a.add_argument("--noise", default="0,0.3,1", help="thermal noise levels σ [ADC LSB]")
    a.add_argument("--draws", type=int, default=3, help="noise draws averaged per σ > 0")
    _chip_arguments(a, scheme=False)
    a.add_argument("--epochs", type=int, default=5)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--results", type=Path, default=Path(DEFAULT_RESULTS))
    a.set_defaults(func=_pim_ablate, _parser=a, _prefix="stereovoxel compress pim-qat ablate")
    e = pim_sub.add_parser("eval", help="deploy a checkpoint on digital hardware or the simulated PIM chip")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--deploy", choices=("digital", "pim"), default="pim")
    e.add_argument("--noise", type=float, default=0.0, help="thermal noise σ [ADC LSB]")
    e.add_argument("--nonlinearity", type=float, default=0.0, help="ADC transfer non-linearity κ")
    e.add_argument("--bn-calibrate", action="store_true", help="re-estimate BN statistics on the chip")
    e.add_argument("--seeds", type=int, default=3, help="noise draws averaged")
    e.add_argument("--results", type=Path, default=Path(DEFAULT_RESULTS))
    e.set_defaults(func=_pim_eval, _parser=e, _prefix="stereovoxel compress pim-qat eval")

    aio = sub.add_parser("all-in-one", help="All-in-One nested-mask pruning with a DVFS run-time switch")
    aio_sub = aio.add_subparsers(dest="aio_command", metavar="STEP", required=True)
    t = aio_sub.add_parser("train", help="train one model + nested masks (or the L1-prune baseline)")
    t.add_argument("--method", choices=("all-in-one", "l1-prune"), default="all-in-one")
    t.add_argument("--ratios", default="0,0.25,0.5,0.75")
    t.add_argument("--widths", default="32,64,128")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, required=True)
    t.set_defaults(func=_aio_train, _parser=t, _prefix="stereovoxel compress all-in-one train")
    e = aio_sub.add_parser("eval", help="accuracy and latency per ratio for one or more checkpoints")
    e.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    e.add_argument("--batch", type=int, default=64, help="latency batch size")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--results", type=Path, default=Path(DEFAULT_RESULTS))
    e.set_defaults(func=_aio_eval, _parser=e, _prefix="stereovoxel compress all-in-one eval")
    d = aio_sub.add_parser(
        "dvfs", help="latency across emulated CPU frequency levels, with and without switching"
    )
    d.add_argument("--checkpoint", type=Path, required=True)
    d.add_argument("--batch", type=int, default=64)
    d.add_argument("--frames", type=int, default=60, help="frames per frequency level")
    d.add_argument(
        "--target-ms",
        type=float,
        default=None,
        help="latency target; default 1.1 × the unpruned latency at the fastest level",
    )
    d.add_argument("--results", type=Path, default=Path(DEFAULT_RESULTS))
    d.set_defaults(func=_aio_dvfs, _parser=d, _prefix="stereovoxel compress all-in-one dvfs")

    w = sub.add_parser(
        "wrap-check", help="wrap a project model with the PIM simulator and All-in-One masks and run it"
    )
    w.add_argument("--model", default="stereovoxelnet_fast", help="a StereoVoxelNet variant name")
    w.add_argument("--results", type=Path, default=Path(DEFAULT_RESULTS))
    w.set_defaults(func=_wrap_check, _parser=w, _prefix="stereovoxel compress wrap-check")


# ---- helpers -------------------------------------------------------------------------------------------------------


def _command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it: the subcommand path plus every option that differs from its default."""
    words = [args._prefix]
    for action in args._parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *(shlex.quote(str(v)) for v in value)]
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


def _markdown(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _load(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise CompressCommandError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CompressCommandError(f"cannot read checkpoint {path}: {err}") from err


def _save(path: Path, payload: dict) -> None:
    import torch

    from stereovoxel_ros.core.atomic_file import atomic_write

    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def _setup_torch(threads: int = 1) -> None:
    import torch

    torch.set_num_threads(threads)


# ---- All-in-One ------------------------------------------------------------------------------------------------


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as err:
        raise CompressCommandError(f"{what} {text!r} is not a comma-separated list of numbers") from err


def _aio_train(args: argparse.Namespace) -> int:
    import time

    import torch
    import torch.nn.functional as F

    from stereovoxel_research.compress.all_in_one import AllInOne
    from stereovoxel_research.digits_task import (
        DigitsCNN,
        DigitsCNNConfig,
        load_digits_data,
        train_classifier,
    )

    _setup_torch()
    ratios = _floats(args.ratios, "--ratios")
    widths = tuple(int(v) for v in _floats(args.widths, "--widths"))
    data = load_digits_data(seed=args.seed)
    torch.manual_seed(args.seed)
    model = DigitsCNN(DigitsCNNConfig(widths=widths))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    if args.method == "all-in-one":
        aio = AllInOne(model, ratios)
        train_classifier(
            aio,
            data,
            args.epochs,
            seed=args.seed,
            progress="all-in-one train",
            loss_fn=lambda m, x, y: m.joint_loss(x, y, F.cross_entropy),
        )
    else:  # baseline: train unpruned, rank channels by filter L1 norm afterwards
        train_classifier(model, data, args.epochs, seed=args.seed, progress="dense train")
        aio = AllInOne(model, ratios)
    gen = torch.Generator().manual_seed(args.seed + 1)
    stats = aio.calibrate_bn(lambda: (x for x, _ in data.batches(64, gen)))
    masks = aio.export(stats)
    plain = aio.detach_model()
    _save(
        args.out,
        {
            "format": "stereovoxel-all-in-one",
            "task": "digits",
            "method": args.method,
            "widths": list(widths),
            "state_dict": plain.state_dict(),
            "masks": masks.state(),
            "seed": args.seed,
        },
    )
    print(f"{args.method}: trained {args.epochs} epochs in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def _aio_switch(ckpt: dict, example):
    from stereovoxel_research.digits_task import DigitsCNN, DigitsCNNConfig
    from stereovoxel_ros.core.occupancy.pruning_switch import NestedMasks, PrunedModelSwitch

    if ckpt.get("format") != "stereovoxel-all-in-one":
        raise CompressCommandError("checkpoint is not an all-in-one checkpoint (format field)")
    model = DigitsCNN(DigitsCNNConfig(widths=tuple(ckpt["widths"])))
    model.load_state_dict(ckpt["state_dict"])
    return PrunedModelSwitch(model, NestedMasks.from_state(ckpt["masks"]), example_input=example)


def _aio_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stereovoxel_research.compress.all_in_one import storage_bytes
    from stereovoxel_research.digits_task import accuracy, load_digits_data
    from stereovoxel_ros.core.atomic_file import write_text_atomic

    _setup_torch(args.threads)
    rows, curves = [], {}
    for path in args.checkpoint:
        ckpt = _load(path)
        data = load_digits_data(seed=ckpt.get("seed", 0))
        example = data.test_x[: args.batch]
        switch = _aio_switch(ckpt, example)
        model_kb = storage_bytes(ckpt["state_dict"]) / 1024
        masks_kb = storage_bytes(ckpt["masks"]) / 1024
        latency = switch.profile(example, repeats=30)
        accs = []
        for ratio in tqdm(switch.masks.ratios, desc=f"eval {path.name}", leave=False):
            accs.append(accuracy(switch.set_ratio(ratio), data))
            params = sum(p.numel() for p in switch.module.parameters())
            rows.append(
                [
                    ckpt["method"],
                    ratio,
                    accs[-1],
                    params,
                    latency[len(accs) - 1],
                    f"{model_kb:.0f} + {masks_kb:.1f}",
                ]
            )
        curves[ckpt["method"]] = (switch.masks.ratios, accs, latency)
    headers = [
        "method",
        "pruning ratio",
        "accuracy",
        "params",
        f"latency [ms] (batch {args.batch})",
        "storage [KiB] model + masks",
    ]
    table = _markdown(headers, rows)
    write_text_atomic(args.results / "all_in_one_results.md", f"`{_command_line(args)}`\n\n" + table)
    _plot_aio(args.results / "all_in_one_results.png", curves)
    print(table)
    return 0


def _plot_aio(path: Path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stereovoxel_ros.core.atomic_file import save_figure_atomic

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for method, (ratios, accs, lat) in curves.items():
        a1.plot(ratios, accs, "o-", label=method)
        a2.plot(ratios, lat, "o-", label=method)
    a1.set(xlabel="pruning ratio", ylabel="test accuracy", title="accuracy per ratio")
    a2.set(xlabel="pruning ratio", ylabel="latency [ms]", title="latency per ratio (this CPU)")
    a1.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)


def _aio_dvfs(args: argparse.Namespace) -> int:
    import statistics

    from tqdm import tqdm

    from stereovoxel_research.compress.all_in_one import run_frames
    from stereovoxel_research.digits_task import load_digits_data
    from stereovoxel_ros.core.atomic_file import write_json_atomic, write_text_atomic
    from stereovoxel_ros.core.occupancy.pruning_switch import RatioSelector, SelectorConfig
    from stereovoxel_ros.offline.eval.emulated_dvfs import EMULATED_LEVELS, emulated_frequency_level

    ckpt = _load(args.checkpoint)
    data = load_digits_data(seed=ckpt.get("seed", 0))
    example = data.test_x[: args.batch]
    switch = _aio_switch(ckpt, example)
    with emulated_frequency_level(EMULATED_LEVELS[0]):
        latency = switch.profile(example, repeats=30)
    target = args.target_ms or 1.1 * latency[0]
    results: dict[str, dict[str, list[float]]] = {"fixed (ratio 0)": {}, "switching": {}}
    ratios_used: dict[str, list[float]] = {}
    for level in tqdm(EMULATED_LEVELS, desc="frequency levels", leave=False):
        with emulated_frequency_level(level):
            switch.set_ratio(switch.masks.ratios[0])
            results["fixed (ratio 0)"][level.name] = run_frames(switch, example, args.frames)
            selector = RatioSelector(
                switch.masks.ratios,
                [v / latency[0] for v in latency],
                SelectorConfig(target_latency_ms=target),
            )
            lat, used = run_frames(switch, example, args.frames, selector=selector, with_ratios=True)
            results["switching"][level.name] = lat
            ratios_used[level.name] = used
    rows = []
    for mode, per_level in results.items():
        means = [statistics.fmean(v) for v in per_level.values()]
        every = [x for v in per_level.values() for x in v]
        over = sum(x > target for x in every) / len(every)
        rows.append(
            [mode]
            + [f"{m:.2f}" for m in means]
            + [f"{statistics.pstdev(means):.2f}", f"{statistics.pstdev(every):.2f}", f"{100 * over:.0f}%"]
        )
    mean_ratio = [f"{statistics.fmean(v):.2f}" for v in ratios_used.values()]
    rows.append(["mean ratio when switching", *mean_ratio, "", "", ""])
    headers = (
        ["mode"]
        + [f"{lv.name} mean [ms]" for lv in EMULATED_LEVELS]
        + ["std of level means [ms]", "std all frames [ms]", f"frames > {target:.2f} ms"]
    )
    table = _markdown(headers, rows)
    write_text_atomic(args.results / "all_in_one_dvfs.md", f"`{_command_line(args)}`\n\n" + table)
    write_json_atomic(
        args.results / "all_in_one_dvfs.json",
        {"target_ms": target, "latency_per_ratio_ms": latency, "frames": results, "ratios": ratios_used},
    )
    _plot_dvfs(args.results / "all_in_one_dvfs.png", results, target)
    print(table)
    return 0


def _plot_dvfs(path: Path, results: dict, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stereovoxel_ros.core.atomic_file import save_figure_atomic

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for mode, per_level in results.items():
        series = [x for v in per_level.values() for x in v]
        ax.plot(series, lw=1, label=mode)
    n = 0
    for name, v in next(iter(results.values())).items():
        ax.axvline(n, color="grey", lw=0.5)
        ax.text(n + 1, ax.get_ylim()[1] * 0.95, name, fontsize=7, va="top")
        n += len(v)
    ax.axhline(target, color="red", ls="--", lw=1, label="target")
    ax.set(xlabel="frame", ylabel="latency [ms]", title="latency across emulated DVFS levels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)


# ---- wrap-check on a project model -----------------------------------------------------------------------------


def _wrap_check(args: argparse.Namespace) -> int:
    import copy
    import time

    import torch

    from stereovoxel_research.compress.all_in_one import AllInOne
    from stereovoxel_research.compress.pim_simulator import PIMConfig, configure_pim, convert_to_pim
    from stereovoxel_ros.core.atomic_file import write_text_atomic
    from stereovoxel_ros.core.occupancy.pruning_switch import PrunedModelSwitch

    try:
        from stereovoxel_ros.core.models.stereovoxelnet import create_stereovoxelnet
    except ImportError as err:
        raise CompressCommandError(f"StereoVoxelNet is not available: {err}") from err
    _setup_torch(2)
    torch.manual_seed(0)
    model = create_stereovoxelnet(args.model).eval()
    w, h = model.config.input_size
    left, right = torch.rand(1, 3, h, w), torch.rand(1, 3, h, w)
    camera = torch.tensor([[w * 0.8, w * 0.8, w / 2, h / 2, 0.12]])
    inputs = (left, right, camera)

    def run(m: torch.nn.Module) -> tuple[torch.Tensor, float]:
        with torch.no_grad():
            t0 = time.perf_counter()
            out = m(*inputs)[-1]
            return out, (time.perf_counter() - t0) * 1e3

    run(model)  # warm-up
    ref, t_ref = run(model)
    rows = [["float", "-", "0", f"{t_ref:.0f}"]]
    for scheme in ("native", "bit_serial", "bit_sliced"):
        pim = copy.deepcopy(model)
        names = convert_to_pim(
            pim,
            PIMConfig(scheme=scheme, weight_bits=8, act_bits=8, adc_bits=8, adc_range=0.125),
            mode="digital",
        )
        run(pim)  # sets activation ranges
        configure_pim(pim, mode="pim")
        out, t = run(pim)
        err = float((torch.sigmoid(out) - torch.sigmoid(ref)).abs().mean())
        rows.append(
            [f"PIM {scheme} (w8a8, ADC 8 b)", f"{len(names)} conv2d/linear", f"{err:.2e}", f"{t:.0f}"]
        )
    aio = AllInOne(copy.deepcopy(model), (0.0, 0.25, 0.5))
    masks = aio.export()
    switch = PrunedModelSwitch(aio.detach_model(), masks, example_input=inputs)
    for ratio in masks.ratios:
        out, t = run(switch.set_ratio(ratio))
        err = float((torch.sigmoid(out) - torch.sigmoid(ref)).abs().mean())
        rows.append(
            [
                f"All-in-One ratio {ratio:g} (untrained masks)",
                f"{len(masks.levels)} masked convs, {switch.compact_layers.get(switch.index, 0)} shrunk",
                f"{err:.2e}",
                f"{t:.0f}",
            ]
        )
    table = _markdown(["variant", "layers", "mean |Δ prob| vs float", "latency [ms]"], rows)
    write_text_atomic(
        args.results / "wrap_check.md", f"`{_command_line(args)}` ({args.model}, random weights)\n\n" + table
    )
    print(table)
    return 0
