"""EfficientFormerV2 search on this CPU: lookup-table accuracy, and the searched model vs MobileNetV2.

Run: ``.venv/bin/python -m stereovoxel_research.search.benchmark [--reuse] [--workdir outputs/search]``. Targets: the
latency table predicts measured end-to-end latency within 15 %; the searched model within 10 % of the
MobileNetV2-1.0 baseline's measured latency with higher test accuracy on upsampled sklearn digits.
Single-threaded torch; latency is the calling thread's CPU time (the machine is shared), batch 1.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from stereovoxel_research.search.digits_search import (
    calibration_batches,
    compare_with_baseline,
    digits_space,
    format_table,
    load_digits_task,
    load_supernet,
    mobilenet_v2_baseline,
    save_supernet,
    train_digits_supernet,
)
from stereovoxel_research.search.joint_search import SubnetEvaluator, joint_search, plot_search
from stereovoxel_research.search.latency_table import (
    CALIBRATION_SEED,
    LatencyTable,
    build_latency_table,
    calibrate_latency_table,
    calibration_subnets,
    measure_model_latency_ms,
)
from stereovoxel_ros.core.atomic_file import write_json_atomic, write_text_atomic
from stereovoxel_ros.core.models.efficientformer_v2 import EfficientFormerV2


def lut_accuracy(table: LatencyTable, space, subnets) -> list[tuple[str, float, float, float, float, float]]:
    """(subnet, block sum [ms], calibrated [ms], measured [ms], errors [%] of both) right after the table."""
    rows = []
    shape = (1, space.base.in_chans, *space.image_hw)
    for subnet in subnets:
        raw, calibrated = table.predict_ms(space, subnet, calibrated=False), table.predict_ms(space, subnet)
        measured = measure_model_latency_ms(EfficientFormerV2(subnet.config(space.base)), shape)
        errors = (100 * (raw - measured) / measured, 100 * (calibrated - measured) / measured)
        rows.append((subnet.describe(), raw, calibrated, measured, *errors))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("outputs/search"))
    parser.add_argument("--reuse", action="store_true", help="reuse supernet.pt from --workdir if present")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--supernet-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8, help="from-scratch training epochs of both models")
    parser.add_argument("--baseline", default="mobilenetv2_100")
    parser.add_argument(
        "--lut-only", action="store_true", help="only the lookup-table accuracy part (~1 min)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.workdir
    space = digits_space("efficientformerv2_s0", args.image_size)
    task = load_digits_task(args.image_size)

    start = time.perf_counter()
    table = build_latency_table(space, progress=True)
    calibrate_latency_table(table, space, calibration_subnets(space, 4))
    table.save(work / "latency_table.json")
    rng = random.Random(0)  # held-out subnets (the calibration ones come from CALIBRATION_SEED)
    lut_rows = lut_accuracy(
        table, space, [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(6))]
    )
    print(
        f"\nlatency table: {len(table.entries)} blocks, {time.perf_counter() - start:.0f} s, {table.meta['device']}"
    )
    print(f"calibration scale {table.scale:.3f} (4 subnets of seed {CALIBRATION_SEED}); held-out subnets:")
    print(f"{'subnet':42s} {'sum [ms]':>9s} {'calib.':>9s} {'measured':>9s} {'err sum':>8s} {'err cal':>8s}")
    for name, raw, cal, meas, err_raw, err_cal in lut_rows:
        print(f"{name:42s} {raw:9.3f} {cal:9.3f} {meas:9.3f} {err_raw:+7.1f}% {err_cal:+7.1f}%")
    for label, col in (("block sum", 4), ("calibrated", 5)):
        errs = [abs(r[col]) for r in lut_rows]
        print(f"LUT |error| ({label}): mean {sum(errs) / len(errs):.1f} %, max {max(errs):.1f} %")
    lut_errors = [abs(r[5]) for r in lut_rows]
    if args.lut_only:
        return 0

    supernet_path = work / "supernet.pt"
    if args.reuse and supernet_path.exists():
        supernet, _ = load_supernet(supernet_path)
    else:
        supernet, losses = train_digits_supernet(space, task, args.supernet_epochs)
        save_supernet(supernet_path, supernet, {"losses": losses})

    shape = (1, 1, args.image_size, args.image_size)
    budget = measure_model_latency_ms(mobilenet_v2_baseline(args.baseline), shape)
    evaluator = SubnetEvaluator(supernet, task.val_x, task.val_y, calibration_batches(task))
    result = joint_search(space, evaluator, lambda s: table.predict_ms(space, s), budget, progress=True)
    plot_search(result, work / "search_pareto.png")
    write_json_atomic(
        work / "search_result.json", {"found_config": result.found.subnet.to_dict(), **result.to_dict()}
    )

    rows = compare_with_baseline(supernet, result.found.subnet, table, args.baseline, args.epochs)
    text = format_table(rows)
    write_json_atomic(work / "bench_search.json", {"lut": lut_rows, "compare": rows, "budget_ms": budget})
    write_text_atomic(work / "bench_search.md", text + "\n")
    print(
        f"\nsearch budget = {args.baseline} measured {budget:.3f} ms; found {result.found.subnet.describe()}"
    )
    print(text)
    base, best = rows[0], rows[3]  # same architecture trained with the baseline's recipe from scratch
    errors = [*lut_errors, abs(rows[1]["lut_error_pct"])]
    print(
        f"\ntargets (searched, from scratch): latency ratio {best['latency_vs_baseline']:.2f} (within 10 %: "
        f"{abs(best['latency_vs_baseline'] - 1) <= 0.10}); accuracy {100 * best['test_acc']:.2f} vs "
        f"{100 * base['test_acc']:.2f} % (higher: {best['test_acc'] > base['test_acc']}); "
        f"LUT max |error| {max(errors):.1f} % (within 15 %: {max(errors) <= 15})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
