"""Speed and peak memory of sketchenv.raster against a naive dense reference rasteriser.

    nice -n 10 python benchmarks/raster.py            # the table (~10 minutes on 2 cores)
    nice -n 10 python benchmarks/raster.py --quick    # smaller, for a smoke test
    nice -n 10 python benchmarks/raster.py --primitives-only --primitive all  # curves only

Each row times one forward+backward, `loss = (render(strokes) * weights).sum()`, of random
strokes in [-1, 1]. Implementations:
- naive: `sketchenv._raster_reference.naive_render_strokes`, every (sketch, stroke, pixel)
  intermediate materialised and differentiated by autograd (what the paper's code does);
- ours: `render_strokes` as shipped (the compiled CPU kernel where a compiler exists);
- ours-torch: `render_strokes` forced onto its chunked PyTorch fallback (SKETCHENV_RASTER=torch).

Every measurement runs in a fresh subprocess. Peak memory is the rise of the process's resident
set during one forward+backward: the kernel's high-water mark (VmHWM) is reset through
/proc/self/clear_refs just before the call and compared with the resident size (VmRSS) right
before it, so it counts every byte the call touches (tensors, allocator slack, threads) and not
memory that merely existed before. Time is the median over repeats after one warm-up, as wall
clock and as process CPU time (summed over threads). On a shared, busy machine multi-threaded
runs of every implementation lose time waiting for descheduled threads; `--threads 1` then
gives the steadier comparison.
The second table ("primitives") draws each `--primitive` (line, quadratic or cubic Bézier
curves, or all three) at 100 × 20 × 96²: every control point uniform in [-1, 1], no width,
opacity or colour option, the default curve tolerance (0.1 σ). It prints ours against the
naive reference for the same primitive, and ours for a curve against ours for lines with the
same stroke count; ours runs in `--rounds` processes per primitive taking turns and the
median round is reported. The naive reference keeps every (sketch, stroke, chord, pixel) term (a
cubic here has ~24 chords), so for curves it runs on `--naive-curve-sketches` sketches and is
scaled (its chord count is that smaller batch's largest, which only flatters it).
At 100 × 50 × 224² the naive reference needs far more memory than a shared machine should
give it, so by default it runs on fewer sketches and its figures are scaled linearly (marked
with *; naive cost is linear in the number of sketches). `--naive-full` measures it in full.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {  # name: (sketches, strokes, image size)
    "paper": (100, 20, 96),
    "large": (100, 50, 224),
}
IMPLEMENTATIONS = ("naive", "ours", "ours-torch")
PRIMITIVES = ("line", "quadratic", "cubic")
PRIMITIVE_SETTING = (100, 20, 96)  # sketches, strokes, image size of the primitives table


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def worker(
    implementation: str,
    sketches: int,
    strokes: int,
    size: int,
    repeats: int,
    threads: int,
    primitive: str = "line",
) -> dict:
    """Measure one implementation in this (fresh) process; returns a JSON-able dict."""
    if implementation == "ours-torch":
        os.environ["SKETCHENV_RASTER"] = "torch"
    import torch

    if threads:
        torch.set_num_threads(threads)

    from sketchenv._raster_reference import naive_render_strokes
    from sketchenv.raster import render_strokes
    from sketchenv.strokes import StrokeFormat

    stroke_format = StrokeFormat(primitive)

    def render(s):
        if implementation == "naive":
            return naive_render_strokes(s, (s_size, s_size), stroke_format=stroke_format)
        return render_strokes(s, s_size, stroke_format=stroke_format)

    def step(points, weights):
        leaf = points.detach().requires_grad_()
        (render(leaf) * weights).sum().backward()
        return leaf.grad

    generator = torch.Generator().manual_seed(0)
    points = torch.rand(sketches, strokes, stroke_format.size, generator=generator) * 2 - 1
    weights = torch.rand(sketches, size, size, generator=generator)
    s_size = 8
    step(points[:1, :2], weights[:1, :8, :8])  # load libraries, kernel and thread pools
    s_size = size

    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to VmRSS
    step(points, weights)
    peak_mib = (_status_kib("VmHWM") - baseline) / 1024

    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step(points, weights)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "wall_ms": 1e3 * statistics.median(walls),
        "cpu_ms": 1e3 * statistics.median(cpus),
        "peak_mib": peak_mib,
        "threads": torch.get_num_threads(),
    }


def measure(
    implementation: str,
    sketches: int,
    strokes: int,
    size: int,
    repeats: int,
    threads: int,
    primitive: str = "line",
) -> dict:
    command = [sys.executable, __file__, "--worker", implementation, str(sketches)]
    command += [str(strokes), str(size), "--repeats", str(repeats), "--threads", str(threads)]
    command += ["--primitive", primitive]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{implementation} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def settings_table(args) -> None:
    """Ours and ours-torch against naive at the SETTINGS sizes (line strokes)."""
    settings = {"quick": (10, 20, 64)} if args.quick else SETTINGS
    header = f"{'setting':<22}{'implementation':<16}{'wall ms':>10}{'cpu ms':>10}{'peak MiB':>10}"
    print(header + f"{'× faster (wall/cpu)':>22}{'× less memory':>15}")
    for name, (sketches, strokes, size) in settings.items():
        label = f"{sketches}×{strokes}×{size}²"
        rows = {}
        for implementation in IMPLEMENTATIONS:
            run_sketches = sketches
            if implementation == "naive" and name == "large" and not args.naive_full:
                run_sketches = min(sketches, args.naive_sketches)
            result = measure(
                implementation, run_sketches, strokes, size, args.repeats, args.threads
            )
            rows[implementation] = _scaled(result, sketches / run_sketches)
        naive = rows["naive"]
        for implementation, r in rows.items():
            line = _row(label, implementation, r)
            if implementation != "naive":
                line += _ratios(naive, r)
            print(line, flush=True)
    print(f"threads: {rows['ours']['threads']}; * = naive measured on fewer sketches, scaled")


def primitives_table(args) -> None:
    """Per primitive at PRIMITIVE_SETTING: ours against naive, and ours against ours-for-lines.

    Ours is measured in `--rounds` fresh processes per primitive, taking turns (line,
    quadratic, cubic, line, ...), and the median round is reported, so a spell of load on the
    machine falls on every primitive alike instead of on one ratio."""
    sketches, strokes, size = (10, 20, 64) if args.quick else PRIMITIVE_SETTING
    primitives = PRIMITIVES if args.primitive == "all" else (args.primitive,)
    if "line" not in primitives:
        primitives = ("line", *primitives)  # the baseline of the curve / line ratio
    label = f"{sketches}×{strokes}×{size}²"
    print(
        f"\nprimitives: {label}, forward+backward, control points uniform in [-1, 1], "
        "no width/opacity/colour option"
    )
    naive = {}
    for primitive in primitives:
        naive_sketches = sketches
        if primitive != "line" and not args.naive_full:
            naive_sketches = min(sketches, args.naive_curve_sketches)
        naive[primitive] = _scaled(
            measure("naive", naive_sketches, strokes, size, args.repeats, args.threads, primitive),
            sketches / naive_sketches,
        )
    rounds = {primitive: [] for primitive in primitives}
    for _ in range(args.rounds):
        for primitive in primitives:
            rounds[primitive].append(
                measure("ours", sketches, strokes, size, args.repeats, args.threads, primitive)
            )
    ours = {p: sorted(r, key=lambda m: m["wall_ms"])[len(r) // 2] for p, r in rounds.items()}
    header = f"{'primitive':<22}{'implementation':<16}{'wall ms':>10}{'cpu ms':>10}{'peak MiB':>10}"
    print(header + f"{'× faster (wall/cpu)':>22}{'× less memory':>15}{'÷ ours line':>14}")
    base = ours["line"]
    for primitive in primitives:
        print(_row(primitive, "naive", naive[primitive]))
        line = _row(primitive, "ours", ours[primitive]) + _ratios(naive[primitive], ours[primitive])
        line += f"{ours[primitive]['wall_ms'] / base['wall_ms']:>8.2f} / "
        line += f"{ours[primitive]['cpu_ms'] / base['cpu_ms']:.2f}"
        print(line)
    spread = ", ".join(
        f"{p} {min(m['wall_ms'] for m in r):.1f}–{max(m['wall_ms'] for m in r):.1f}"
        for p, r in rounds.items()
    )
    print(
        f"threads: {base['threads']}; * = naive measured on fewer sketches, scaled; "
        f"ours = median of {args.rounds} rounds taking turns (wall ms per round: {spread}); "
        "÷ ours line = wall / cpu time of ours for this primitive over ours for lines"
    )


def _scaled(result: dict, scale: float) -> dict:
    for key in ("wall_ms", "cpu_ms", "peak_mib"):
        result[key] *= scale
    result["scaled"] = scale != 1
    return result


def _row(label: str, implementation: str, r: dict) -> str:
    mark = "*" if r.get("scaled") else ""
    line = f"{label:<22}{implementation + mark:<16}"
    return line + f"{r['wall_ms']:>10.1f}{r['cpu_ms']:>10.1f}{r['peak_mib']:>10.1f}"


def _ratios(naive: dict, r: dict) -> str:
    speed = f"{naive['wall_ms'] / r['wall_ms']:.0f} / {naive['cpu_ms'] / r['cpu_ms']:.0f}"
    return f"{speed:>22}{naive['peak_mib'] / max(r['peak_mib'], 0.1):>15.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--naive-full", action="store_true", help="never shrink the naive run")
    parser.add_argument("--naive-sketches", type=int, default=10, help="naive batch at 224²")
    parser.add_argument(
        "--naive-curve-sketches", type=int, default=5, help="naive batch for curves"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="processes per primitive for ours, taking turns"
    )
    parser.add_argument(
        "--primitive", choices=[*PRIMITIVES, "all"], default="all", help="primitives table"
    )
    parser.add_argument(
        "--primitives-only", action="store_true", help="skip the line settings table"
    )
    parser.add_argument(
        "--worker", nargs=4, metavar=("IMPL", "B", "N", "S"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        implementation, *sizes = args.worker
        primitive = "line" if args.primitive == "all" else args.primitive
        result = worker(implementation, *map(int, sizes), args.repeats, args.threads, primitive)
        print(json.dumps(result))
        return
    if not args.primitives_only:
        settings_table(args)
    primitives_table(args)


if __name__ == "__main__":
    main()
