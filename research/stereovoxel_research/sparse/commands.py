"""``stereovoxel sparse``: SpFDE / SparCL benchmarks on digits and a small occupancy fine-tuning comparison."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stereovoxel_ros.offline.train.commands import parse_key_values


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help,
        description="Efficient training benchmarks: SpFDE (sparse + layer freezing + data sieving) and SparCL "
        "(sparse continual learning on DER++) on scikit-learn digits, and occupancy fine-tuning.",
    )
    actions = p.add_subparsers(dest="sparse_action", metavar="ACTION", required=True)

    d = actions.add_parser(
        "digits",
        help="one benchmark row: a method on digits (spfde: 10 classes; sparcl: class-incremental, 5 tasks)",
    )
    d.add_argument("benchmark", choices=("spfde", "sparcl"))
    d.add_argument("--method", choices=("dense", "sparse", "spfde", "derpp", "sparcl"), required=True)
    d.add_argument(
        "--method-opt", action="append", default=[], metavar="KEY=VALUE", help="method option (JSON)"
    )
    d.add_argument("--epochs", type=int, default=None, help="epochs (per task for sparcl); default 30 / 8")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=1)
    d.set_defaults(func=_run_digits)

    t = actions.add_parser("table", help="every row of the spfde or sparcl digits table, as markdown + PNG")
    t.add_argument("benchmark", choices=("spfde", "sparcl"))
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", type=Path, default=None, help="write results.json and the plot here")
    t.set_defaults(func=_run_table)

    o = actions.add_parser("occupancy", help="dense vs spfde vs sparcl `stereovoxel finetune` on a dataset")
    o.add_argument("checkpoint", help="StereoVoxelNet checkpoint to fine-tune")
    o.add_argument("datasets", nargs="+", help="dataset directories (e.g. from `stereovoxel dataset synth`)")
    o.add_argument("--out", type=Path, required=True, help="one sub-directory per method")
    o.add_argument("--epochs", type=int, default=3)
    o.add_argument("--batch-size", type=int, default=4)
    o.add_argument("--limit", type=int, default=None, help="at most this many training samples")
    o.add_argument("--methods", default="dense,spfde,sparcl")
    o.add_argument("--method-opt", action="append", default=[], metavar="METHOD:KEY=VALUE")
    o.add_argument("--threads", type=int, default=2)
    o.set_defaults(func=_run_occupancy)


def _run_digits(args: argparse.Namespace) -> int:
    import torch

    from stereovoxel_research.sparse import continual_benchmark as cb
    from stereovoxel_ros.offline.train.trainer import TrainingError

    torch.set_num_threads(max(1, args.threads))
    opts = parse_key_values(args.method_opt)
    epochs = args.epochs or (30 if args.benchmark == "spfde" else 8)
    cmd = cb.row_command(args.benchmark, args.method, opts, epochs, args.seed)
    run = cb.run_digits_standard if args.benchmark == "spfde" else cb.run_digits_continual
    try:
        result = run(args.method, opts, epochs, seed=args.seed, command=cmd, progress=True)
    except (cb.BenchmarkError, TrainingError) as err:
        print(f"stereovoxel sparse digits: {err}", file=sys.stderr)
        return 2
    print(cb.format_table([result], args.method, continual=args.benchmark == "sparcl"))
    if result.accuracy_matrix:
        print("accuracy after each task (rows) on each task (columns):")
        for row in result.accuracy_matrix:
            print("  " + " ".join(f"{v:.2f}" for v in row))
    return 0


def _run_table(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import torch

    from stereovoxel_research.sparse import continual_benchmark as cb
    from stereovoxel_ros.core.atomic_file import write_json_atomic

    torch.set_num_threads(max(1, args.threads))
    continual = args.benchmark == "sparcl"
    baseline = "derpp" if continual else "dense"

    def show(r: cb.RunResult) -> None:
        print(
            f"done: {r.command}: acc {r.accuracy:.3f}, {r.train_flops / 1e9:.2f} GFLOPs, {r.seconds:.0f} s",
            flush=True,
        )

    results = cb.run_table(args.benchmark, epochs=args.epochs, seed=args.seed, on_row=show)
    print(cb.format_table(results, baseline, continual))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / f"{args.benchmark}_results.json", [asdict(r) for r in results])
        cb.plot_results(
            args.out / f"{args.benchmark}_accuracy_vs_flops.png", results, f"{args.benchmark} on digits"
        )
        print(f"wrote {args.out / f'{args.benchmark}_results.json'} and the plot")
    return 0


def _run_occupancy(args: argparse.Namespace) -> int:
    import shlex

    import torch

    from stereovoxel_ros.cli import main as cli_main

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    per_method: dict[str, list[str]] = {m: [] for m in methods}
    for item in args.method_opt:
        method, _, opt = item.partition(":")
        if method not in per_method or "=" not in opt:
            print(
                f"stereovoxel sparse occupancy: --method-opt {item!r} is not METHOD:KEY=VALUE",
                file=sys.stderr,
            )
            return 2
        per_method[method].append(opt)
    rows = []
    for method in methods:
        out = args.out / method
        argv = [
            "finetune",
            args.checkpoint,
            *args.datasets,
            "--out",
            str(out),
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
            "--method",
            method,
            "--no-progress",
        ]
        if args.limit is not None:
            argv += ["--limit", str(args.limit)]
        for opt in per_method[method]:
            argv += ["--method-opt", opt]
        print("running: stereovoxel " + shlex.join(argv), flush=True)
        code = cli_main(argv)
        if code:
            print(f"stereovoxel sparse occupancy: {method} failed with exit code {code}", file=sys.stderr)
            return code
        meta = torch.load(out / "final.pt", map_location="cpu", weights_only=False)["meta"]
        history = meta.get("history", [])
        samples = meta.get("samples_seen")
        flops = meta.get("train_flops")
        if flops is None:  # plain dense training carries no meter: count one step, times the samples trained
            flops, samples = _dense_finetune_flops(args.checkpoint, args.datasets, args.limit, args.epochs)
        last = history[-1] if history else {}
        rows.append(
            {
                "command": "stereovoxel " + shlex.join(argv),
                "val_f1": last.get("val_f1_0_6m"),
                "val_iou": last.get("val_iou"),
                "flops": flops,
                "samples": samples,
                "density": meta.get("weight_density", 1.0),
                "seconds": sum(r.get("epoch_s", 0.0) for r in history),
            }
        )
    base = next((r for r, m in zip(rows, methods) if m == "dense"), rows[0])
    lines = [
        "| command | val F1 0-6 m (last epoch) | vs dense | val IoU | weight density | samples trained "
        "| train GFLOPs | vs dense | wall s | vs dense |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f1 = "n/a" if r["val_f1"] is None else f"{r['val_f1']:.3f}"
        df1 = "" if r["val_f1"] is None or base["val_f1"] is None else f"{r['val_f1'] - base['val_f1']:+.3f}"
        iou = "n/a" if r["val_iou"] is None else f"{r['val_iou']:.3f}"
        lines.append(
            f"| `{r['command']}` | {f1} | {df1} | {iou} | {r['density']:.2f} | {r['samples']} | "
            f"{r['flops'] / 1e9:.1f} | {r['flops'] / base['flops']:.2f}x | {r['seconds']:.0f} | "
            f"{r['seconds'] / max(base['seconds'], 1e-9):.2f}x |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    from stereovoxel_ros.core.atomic_file import write_text_atomic

    write_text_atomic(args.out / "occupancy_finetune.md", table)
    return 0


def _dense_finetune_flops(
    checkpoint: str, datasets: list[str], limit: int | None, epochs: int
) -> tuple[float, int]:
    """(counted FLOPs, samples) of dense fine-tuning: one counted step of 2 samples, per sample × samples."""
    from stereovoxel_ros.core.models.stereovoxelnet import load_checkpoint
    from stereovoxel_ros.offline.data.dataset_format import read_split
    from stereovoxel_ros.offline.train.tasks import OccupancyTask, PreparedStereoSet
    from stereovoxel_ros.offline.train.training_flops import count_step_flops

    n_train = sum(len(read_split(root, "train")) for root in datasets)
    n_train = min(n_train, limit) if limit is not None else n_train
    ckpt = load_checkpoint(checkpoint)
    task = OccupancyTask(ckpt.model, ckpt.variant)
    probe = PreparedStereoSet(datasets, "train", ckpt.model.config.input_size, task.needs_depth, False, 2)
    batch = probe.batch(list(range(len(probe))))
    ckpt.model.train()
    step = count_step_flops(ckpt.model, lambda: task.losses(ckpt.model, batch)[0].mean().backward())
    samples = n_train * epochs
    return step.total / len(probe) * samples, samples
