"""ADV² on ResNet-50 on a GPU, for every interpreter: seconds per image beside paper 000 Table III.

The second half of ``benchmarks/gpu_check.sh`` (the first runs the device tests). ResNet-50 with random
weights (the cost does not depend on them), 224 px, a batch of 16. Each row is measured as in
``joint_cost.py`` (one iteration = (run(span) - run(0)) / span through the public ``Attack.run``, medians
over repeats, MASK's resets priced by timed MASK steps), on wall time synchronised with the device, and
extrapolated to the attack's default iteration counts. Baseline: paper 000 Table III, PGD-based ADV² on
ResNet (Grad 32.7 s, CAM 15.4 s, MASK 189 s, RTS 8.8 s per image); the goal is at least 20x faster.
The results file is rewritten after every row, so a run cut short keeps what it measured.

    python benchmarks/gpu_check.py --device cuda            # -> benchmarks/results/gpu.json
    python benchmarks/gpu_check.py --device cpu --quick --out runs/gpu_quick.json   # smoke test: 32 px, batch 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from _timing import RESULTS, machine, wall_seconds_on
from joint_cost import ROWS, bench_row, load_setting

from idls.devices import resolve_device

#: paper 000 Table III: seconds per image of PGD-based ADV² on ResNet, by interpreter
PAPER_TABLE_III: dict[str, float] = {"grad": 32.7, "cam": 15.4, "mask": 189.0, "rts": 8.8}
GOAL_SPEEDUP = 20.0
#: PGD first (ADV²'s warm start is priced at its iteration), then every interpreter (IG last: the paper has
#: no figure for it and it is the slowest to time)
ROW_NAMES: tuple[str, ...] = ("pgd", "adv2-cam", "adv2-gradcam", "adv2-rts", "adv2-grad", "adv2-mask", "adv2-ig")


def device_info(device: torch.device) -> dict:
    """The machine and, on CUDA, the GPU and the precision settings the numbers were measured with."""
    info = {**machine(), "device": str(device)}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    tf32_cudnn=torch.backends.cudnn.allow_tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
    return info


def against_paper(seconds_per_image: float, interpreter: str | None) -> dict:
    """The paper's figure for the row's interpreter, the speed-up over it and whether it meets the goal."""
    paper = PAPER_TABLE_III.get(interpreter or "")
    if paper is None or not math.isfinite(seconds_per_image) or seconds_per_image <= 0:
        return {"paper_seconds_per_image": paper, "speedup": None, "meets_goal": None}
    speedup = paper / seconds_per_image
    return {"paper_seconds_per_image": paper, "speedup": speedup, "meets_goal": bool(speedup >= GOAL_SPEEDUP)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="smoke test: CIFAR ResNet-20 at 32 px, batch 2, 1 repeat")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default 16; quick: 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats per row (default 3; quick: 1)")
    parser.add_argument("--rows", default=",".join(ROW_NAMES), help="rows of joint_cost.py (pgd always runs first)")
    parser.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/gpu.json; "
                                                                "quick: runs/gpu_check_quick.json)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    key = "cifar" if args.quick else "imagenet"
    batch = args.batch or (2 if args.quick else 16)
    repeats = args.repeats or (1 if args.quick else 3)
    out = args.out or (Path("runs/gpu_check_quick.json") if args.quick else RESULTS / "gpu.json")
    wanted = ["pgd", *[name for name in args.rows.split(",") if name != "pgd"]]
    by_name = {row.name: row for row in ROWS}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)}; choose from {', '.join(by_name)}")
    if device.type == "cpu":
        torch.set_num_threads(1)
    started = time.perf_counter()
    setting = load_setting(key, device=device, batch=batch)
    timer = wall_seconds_on(device)
    payload: dict = {
        "machine": device_info(device),
        "method": __doc__.split("\n\n    python")[0],
        "model": setting.classifier.info.name, "input_size": setting.size, "batch": setting.batch,
        "weights": setting.weights, "images": setting.images, "repeats": repeats, "quick": args.quick,
        "clock": "wall time, synchronised with the device before and after each timed call",
        "paper_table_iii_seconds_per_image": PAPER_TABLE_III, "goal_speedup": GOAL_SPEEDUP, "rows": {},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{setting.classifier.info.name} {setting.size}px batch {setting.batch} on {device} "
          f"({payload['machine'].get('gpu', 'cpu')})")
    print(f"{'row':14s} {'ms/iter':>9s} {'s/image':>9s} {'paper':>7s} {'speed-up':>9s}")
    pgd_unit = None
    for name in wanted:
        row = by_name[name]
        began = time.perf_counter()
        entry = bench_row(row, setting, repeats, pgd_unit, timer)
        if row.name == "pgd":
            pgd_unit = entry["ms_per_iteration"] / 1000
        entry.update(against_paper(entry["seconds_per_image"], row.interpreter),
                     measured_in_seconds=time.perf_counter() - began)
        payload["rows"][row.name] = entry
        payload["wall_seconds"] = time.perf_counter() - started
        out.write_text(json.dumps(payload, indent=2))
        paper = entry["paper_seconds_per_image"]
        speedup = entry["speedup"]
        print(f"{row.name:14s} {entry['ms_per_iteration']:9.1f} {entry['seconds_per_image']:9.3f} "
              f"{'-' if paper is None else f'{paper:.1f}':>7s} {'-' if speedup is None else f'{speedup:.1f}x':>9s}",
              flush=True)
    print(f"wrote {out} ({payload['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
