"""``stereovoxel search``: latency table, supernet training, fine-grained joint search, baseline comparison."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_DIR = Path("outputs/search")


def register(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add ``search lut|train-supernet|search|compare|extractors``."""
    p = subparsers.add_parser(
        name,
        help=help,
        description="EfficientFormerV2 latency/size-aware search on this machine (demo task: sklearn digits).",
    )
    sub = p.add_subparsers(dest="search_command", metavar="STEP", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--variant", default="efficientformerv2_s0", help="largest subnet (published variant)")
        q.add_argument("--image-size", type=int, default=32, help="input side [px] (digits are upsampled)")
        q.add_argument("--threads", type=int, default=1, help="torch CPU threads")

    q = sub.add_parser("lut", help="measure the per-block latency lookup table on this machine")
    common(q)
    q.add_argument("--rounds", type=int, default=5)
    q.add_argument("--reps", type=int, default=20)
    q.add_argument(
        "--flush-mb", type=float, default=8.0, help="cache-flush buffer before each timed call [MiB]"
    )
    q.add_argument(
        "--clock", choices=("thread_cpu", "wall"), default="thread_cpu", help="what latency counts"
    )
    q.add_argument(
        "--calibration-subnets",
        type=int,
        default=4,
        help="random subnets measured end to end to fit the table's scale (0: plain block sums)",
    )
    q.add_argument("--out", type=Path, default=DEFAULT_DIR / "latency_table.json")
    q.set_defaults(func=_cmd_lut)

    q = sub.add_parser("train-supernet", help="sandwich-rule training of the slimmable supernet")
    common(q)
    q.add_argument("--epochs", type=int, default=5)
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--lr", type=float, default=3e-3)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--steps-per-epoch", type=int, default=None, help="cap batches per epoch (smoke runs)")
    q.add_argument("--out", type=Path, default=DEFAULT_DIR / "supernet.pt")
    q.set_defaults(func=_cmd_train)

    q = sub.add_parser("search", help="fine-grained joint search under a latency and/or size budget")
    q.add_argument("--supernet", type=Path, default=DEFAULT_DIR / "supernet.pt")
    q.add_argument("--lut", type=Path, default=DEFAULT_DIR / "latency_table.json")
    q.add_argument("--latency-budget-ms", type=float, help="predicted latency budget [ms]")
    q.add_argument(
        "--budget-model",
        default=None,
        help="set the latency budget to this MobileNetV2 variant's measured latency",
    )
    q.add_argument("--params-budget", type=int, help="parameter budget")
    q.add_argument(
        "--latency-weight", type=float, default=0.5, help="weight of latency in the combined score"
    )
    q.add_argument("--calib-images", type=int, default=128, help="training images for BN re-estimation")
    q.add_argument("--val-images", type=int, default=None, help="cap the validation images per evaluation")
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--out-dir", type=Path, default=DEFAULT_DIR)
    q.set_defaults(func=_cmd_search)

    q = sub.add_parser("compare", help="searched model vs the MobileNetV2 baseline, one table")
    q.add_argument("--supernet", type=Path, default=DEFAULT_DIR / "supernet.pt")
    q.add_argument("--result", type=Path, default=DEFAULT_DIR / "search_result.json")
    q.add_argument("--lut", type=Path, default=DEFAULT_DIR / "latency_table.json")
    q.add_argument("--baseline", default="mobilenetv2_100")
    q.add_argument("--epochs", type=int, default=8, help="from-scratch training epochs (both models)")
    q.add_argument(
        "--finetune-epochs", type=int, default=3, help="fine-tuning epochs of the inherited subnet"
    )
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--out-dir", type=Path, default=DEFAULT_DIR)
    q.set_defaults(func=_cmd_compare)

    from stereovoxel_research.search.extractor_latency import register_extractors

    register_extractors(sub)


def _cmd_lut(args: argparse.Namespace) -> int:
    from stereovoxel_research.search.digits_search import digits_space
    from stereovoxel_research.search.latency_table import (
        build_latency_table,
        calibrate_latency_table,
        calibration_subnets,
    )

    space = digits_space(args.variant, args.image_size)
    start = time.perf_counter()
    table = build_latency_table(
        space,
        threads=args.threads,
        rounds=args.rounds,
        reps=args.reps,
        clock=args.clock,
        flush_mb=args.flush_mb,
        progress=True,
    )
    table.meta["variant"] = args.variant
    print(
        f"latency table: {len(table.entries)} blocks measured in {time.perf_counter() - start:.1f} s on "
        f"{table.meta['device']} ({args.threads} thread) -> {args.out}"
    )
    if args.calibration_subnets > 0:
        subnets = calibration_subnets(space, args.calibration_subnets)
        scale = calibrate_latency_table(table, space, subnets, args.threads)
        print(f"  end-to-end calibration over {len(subnets)} random subnets: scale {scale:.3f}")
    table.save(args.out)
    for subnet, label in ((space.largest(), "largest"), (space.smallest(), "smallest")):
        print(f"  predicted {label:8s} {subnet.describe():40s} {table.predict_ms(space, subnet):7.3f} ms")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from stereovoxel_research.search.digits_search import (
        digits_space,
        load_digits_task,
        save_supernet,
        train_digits_supernet,
    )

    torch.set_num_threads(args.threads)
    task = load_digits_task(args.image_size, seed=args.seed)
    space = digits_space(args.variant, args.image_size)
    start = time.perf_counter()
    supernet, losses = train_digits_supernet(
        space, task, args.epochs, args.batch_size, args.lr, args.seed, args.steps_per_epoch
    )
    minutes = (time.perf_counter() - start) / 60
    save_supernet(args.out, supernet, {"losses": losses, "variant": args.variant, "train_minutes": minutes})
    print(
        f"supernet trained {args.epochs} epochs in {minutes:.1f} min, largest-subnet loss {losses[-1]:.3f} -> {args.out}"
    )
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import torch

    from stereovoxel_research.search.digits_search import (
        calibration_batches,
        load_digits_task,
        load_supernet,
        mobilenet_v2_baseline,
    )
    from stereovoxel_research.search.joint_search import SubnetEvaluator, joint_search, plot_search
    from stereovoxel_research.search.latency_table import LatencyTable, measure_model_latency_ms
    from stereovoxel_ros.core.atomic_file import write_json_atomic

    torch.set_num_threads(args.threads)
    supernet, _ = load_supernet(args.supernet)
    space = supernet.space
    table = LatencyTable.load(args.lut)
    task = load_digits_task(space.image_hw[0])
    shape = (1, space.base.in_chans, *space.image_hw)
    budget, baselines = args.latency_budget_ms, {}
    if args.budget_model:
        baseline = mobilenet_v2_baseline(args.budget_model)
        budget = measure_model_latency_ms(baseline, shape)
        print(f"latency budget = measured {args.budget_model}: {budget:.3f} ms")
    n_val = args.val_images or len(task.val_x)
    evaluator = SubnetEvaluator(
        supernet, task.val_x[:n_val], task.val_y[:n_val], calibration_batches(task, args.calib_images)
    )
    start = time.perf_counter()
    result = joint_search(
        space,
        evaluator,
        lambda s: table.predict_ms(space, s),
        latency_budget_ms=budget,
        params_budget=args.params_budget,
        latency_weight=args.latency_weight,
        progress=True,
    )
    found = result.found
    model = supernet.export(found.subnet)
    measured = measure_model_latency_ms(model, shape)
    summary = {
        "found_config": found.subnet.to_dict(),
        "found_describe": found.subnet.describe(),
        "val_acc_inherited": found.val_acc,
        "predicted_latency_ms": found.latency_ms,
        "measured_latency_ms": measured,
        "lut_error_pct": 100 * (found.latency_ms - measured) / measured,
        "params": found.params,
        "evaluated_subnets": len(result.explored),
        "search_minutes": (time.perf_counter() - start) / 60,
        "latency_table": str(args.lut),
        "supernet": str(args.supernet),
        "search": result.to_dict(),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out_dir / "search_result.json", summary)
    plot_search(result, args.out_dir / "search_pareto.png", baselines)
    print(
        f"found {found.subnet.describe()} after {len(result.path) - 1} actions ({len(result.explored)} subnets "
        f"evaluated, {summary['search_minutes']:.1f} min)\n"
        f"  val acc (inherited) {100 * found.val_acc:.2f} %, params {found.params / 1e6:.3f} M, latency predicted "
        f"{found.latency_ms:.3f} ms / measured {measured:.3f} ms ({summary['lut_error_pct']:+.1f} %)\n"
        f"  -> {args.out_dir / 'search_result.json'}, {args.out_dir / 'search_pareto.png'}"
    )
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import torch

    from stereovoxel_research.search.digits_search import (
        compare_with_baseline,
        format_table,
        load_supernet,
    )
    from stereovoxel_research.search.latency_table import LatencyTable
    from stereovoxel_research.search.search_space import Subnet

    torch.set_num_threads(args.threads)
    supernet, _ = load_supernet(args.supernet)
    subnet = Subnet.from_dict(json.loads(args.result.read_text())["found_config"])
    rows = compare_with_baseline(
        supernet, subnet, LatencyTable.load(args.lut), args.baseline, args.epochs, args.finetune_epochs
    )
    from stereovoxel_ros.core.atomic_file import write_json_atomic, write_text_atomic

    table = format_table(rows)
    write_json_atomic(args.out_dir / "compare.json", rows)
    write_text_atomic(args.out_dir / "compare.md", table + "\n")
    print(table)
    return 0
