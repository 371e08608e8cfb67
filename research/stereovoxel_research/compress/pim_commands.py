"""``stereovoxel compress pim-qat``: train, eval and ablate (PIM-aware quantization on the digits task)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stereovoxel_research.compress.commands import (
    CompressCommandError,
    _command_line,
    _floats,
    _load,
    _markdown,
    _save,
    _setup_torch,
)


def _chip_arguments(p: argparse.ArgumentParser, scheme: bool = True) -> None:
    if scheme:
        p.add_argument("--scheme", choices=("native", "bit_serial", "bit_sliced"), default="bit_serial")
    p.add_argument("--weight-bits", type=int, default=4)
    p.add_argument("--act-bits", type=int, default=4)
    p.add_argument("--rows", type=int, default=64, help="crossbar rows per ADC group")
    p.add_argument("--slice-bits", type=int, default=1)
    p.add_argument("--adc-bits", type=int, default=4)
    p.add_argument("--adc-range", type=float, default=0.25, help="ADC full scale / largest partial sum")


def _chip(args: argparse.Namespace, scheme: str):
    from stereovoxel_research.compress.pim_simulator import PIMConfig, PIMError

    try:
        return PIMConfig(
            scheme=scheme,  # type: ignore[arg-type]
            weight_bits=args.weight_bits,
            act_bits=args.act_bits,
            rows=args.rows,
            slice_bits=args.slice_bits,
            adc_bits=args.adc_bits,
            adc_range=args.adc_range,
        )
    except PIMError as err:
        raise CompressCommandError(str(err)) from err


# ---- PIM-QAT ---------------------------------------------------------------------------------------------------


def _pim_train(args: argparse.Namespace) -> int:
    import time
    from dataclasses import asdict

    import torch

    from stereovoxel_research.compress.pim_ablation import EXCLUDED_LAYERS
    from stereovoxel_research.compress.pim_qat import prepare_for_training
    from stereovoxel_research.compress.pim_simulator import configure_pim
    from stereovoxel_research.digits_task import (
        PIM_DIGITS_WIDTHS,
        DigitsCNN,
        DigitsCNNConfig,
        accuracy,
        load_digits_data,
        train_classifier,
    )

    _setup_torch()
    chip = _chip(args, args.scheme)
    data = load_digits_data(seed=args.seed)
    torch.manual_seed(args.seed)
    model = DigitsCNN(DigitsCNNConfig(widths=PIM_DIGITS_WIDTHS))
    exclude = EXCLUDED_LAYERS  # first and last layers stay digital, every other conv on the PIM
    rescale = args.rescale if args.method == "pim-qat" else "none"
    train_cfg = prepare_for_training(
        model, chip, args.method, args.adjusted_precision_noise, exclude, rescale=rescale
    )
    t0 = time.perf_counter()
    train_classifier(model, data, args.epochs, seed=args.seed, progress=f"{args.method} train")
    configure_pim(model, mode="digital")
    acc = accuracy(model, data)
    _save(
        args.out,
        {
            "format": "stereovoxel-pim-qat",
            "task": "digits",
            "method": args.method,
            "adjusted_precision_noise": args.adjusted_precision_noise,
            "chip": asdict(chip),
            "train_config": asdict(train_cfg),
            "exclude": list(exclude),
            "widths": list(PIM_DIGITS_WIDTHS),
            "rescale": rescale,
            "state_dict": model.state_dict(),
            "seed": args.seed,
        },
    )
    print(
        f"{args.method}: trained {args.epochs} epochs in {time.perf_counter() - t0:.1f} s "
        f"(train ADC {train_cfg.adc_bits} bit); digital test accuracy {acc:.3f} -> {args.out}"
    )
    return 0


def _pim_model(ckpt: dict):
    from stereovoxel_research.compress.pim_simulator import PIMConfig, convert_to_pim
    from stereovoxel_research.digits_task import DigitsCNN, DigitsCNNConfig

    if ckpt.get("format") != "stereovoxel-pim-qat":
        raise CompressCommandError("checkpoint is not a pim-qat checkpoint (format field)")
    model = DigitsCNN(DigitsCNNConfig(widths=tuple(ckpt.get("widths", (16, 32, 64)))))
    chip = PIMConfig(**ckpt["chip"])
    convert_to_pim(model, chip, mode="digital", exclude=ckpt["exclude"])
    model.load_state_dict(ckpt["state_dict"])
    return model, chip


def _pim_eval(args: argparse.Namespace) -> int:
    import copy
    import statistics

    import torch

    from stereovoxel_research.compress.pim_qat import calibrate_batchnorm, deploy_on_pim
    from stereovoxel_research.compress.pim_simulator import configure_pim
    from stereovoxel_research.digits_task import accuracy, load_digits_data
    from stereovoxel_ros.core.atomic_file import write_text_atomic

    _setup_torch()
    ckpt = _load(args.checkpoint)
    model, chip = _pim_model(ckpt)
    rescale = ckpt.get("rescale", "both" if ckpt["method"] == "pim-qat" else "none")
    data = load_digits_data(seed=ckpt.get("seed", 0))
    noisy = args.noise > 0
    seeds = range(args.seeds if noisy else 1)
    accs = []
    for seed in seeds:
        m = copy.deepcopy(model)
        if args.deploy == "digital":
            configure_pim(m, mode="digital")
        else:
            deploy_on_pim(m, chip.with_(noise_std=args.noise, adc_nonlinearity=args.nonlinearity), seed=seed)
            configure_pim(m, rescale=rescale)
        if args.bn_calibrate:
            gen = torch.Generator().manual_seed(100 + seed)
            calibrate_batchnorm(m, (x for x, _ in data.batches(64, gen)))
        accs.append(accuracy(m, data))
    acc = statistics.fmean(accs)
    row = {
        "command": _command_line(args),
        "method": ckpt["method"],
        "adjusted_precision": ckpt.get("adjusted_precision_noise") is not None,
        "deploy": args.deploy,
        "noise_lsb": args.noise,
        "nonlinearity": args.nonlinearity,
        "bn_calibration": args.bn_calibrate,
        "accuracy": acc,
        "accuracy_std": statistics.pstdev(accs),
        "draws": len(accs),
        "chip": f"{chip.scheme} w{chip.weight_bits}a{chip.act_bits} {chip.rows} rows "
        f"ADC {chip.adc_bits} b @ {chip.adc_range:g} FS",
    }
    print(json.dumps(row))
    log = args.results / "pim_qat_results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    rows = [r for r in rows if r["command"] != row["command"]] + [row]
    write_text_atomic(log, "".join(json.dumps(r) + "\n" for r in rows))
    table = _markdown(
        ["command", "deploy", "noise σ [LSB] / κ", "BN cal.", "accuracy"],
        [
            [
                f"`{r['command']}`",
                r["deploy"],
                f"{r['noise_lsb']:g} / {r['nonlinearity']:g}",
                "yes" if r["bn_calibration"] else "no",
                f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f}",
            ]
            for r in rows
        ],
    )
    write_text_atomic(args.results / "pim_qat_results.md", f"Chip: {row['chip']}\n\n" + table)
    _plot_bars(args.results / "pim_qat_results.png", rows)
    print(table)
    return 0


def _pim_ablate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stereovoxel_research.compress.pim_ablation import (
        ablation_findings,
        ablation_table,
        run_ablation,
        training_variants,
    )
    from stereovoxel_research.compress.pim_simulator import SCHEMES
    from stereovoxel_ros.core.atomic_file import write_text_atomic

    _setup_torch()
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    bad = [s for s in schemes if s not in SCHEMES]
    if bad or not schemes:
        raise CompressCommandError(f"--schemes {args.schemes!r}: choose from {', '.join(SCHEMES)}")
    noise = _floats(args.noise, "--noise")
    if any(s < 0 for s in noise):
        raise CompressCommandError(f"--noise {args.noise!r}: noise levels must be >= 0")
    chip = _chip(args, schemes[0])
    bar = tqdm(total=len(schemes) * len(training_variants(noise)), desc="pim-qat ablate")

    def step(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    rows = run_ablation(chip, schemes, noise, args.epochs, args.draws, args.seed, progress=step)
    bar.close()
    command = _command_line(args)
    for r in rows:
        r["command"] = command
    log = args.results / "pim_qat_ablation.jsonl"
    old = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    rows = [r for r in old if r["command"] != command] + rows
    write_text_atomic(log, "".join(json.dumps(r) + "\n" for r in rows))
    chip_text = (
        f"{chip.weight_bits}-bit weights, {chip.act_bits}-bit activations, {chip.rows} rows per ADC, "
        f"ADC {chip.adc_bits} b at {chip.adc_range:g} of full scale; {rows[-1]['layers_on_pim']} of "
        f"{rows[-1]['layers_on_pim'] + 2} layers on the PIM"
    )
    text = (
        f"Chip: {chip_text}\n\n"
        + ablation_table(rows)
        + "\n"
        + "\n".join(f"- {line}" for line in ablation_findings(rows))
    )
    commands = sorted({r["command"] for r in rows})
    text += "\n\nCommands: " + "; ".join(f"`{c}`" for c in commands) + "\n"
    write_text_atomic(args.results / "pim_qat_ablation.md", text)
    print(text)
    return 0


def _plot_bars(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stereovoxel_ros.core.atomic_file import save_figure_atomic

    labels = []
    for r in rows:
        label = r["method"] + (" +AP" if r["adjusted_precision"] else "") + f"\n{r['deploy']}"
        if r["noise_lsb"] > 0:
            label += f" σ={r['noise_lsb']:g} κ={r['nonlinearity']:g}"
        if r["bn_calibration"]:
            label += "\n+BN cal."
        labels.append(label)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    ax.bar(
        range(len(rows)),
        [r["accuracy"] for r in rows],
        yerr=[r["accuracy_std"] for r in rows],
        color="tab:blue",
    )
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("PIM-QAT on digits")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
