"""Speed and peak memory of sketchenv.raster against a naive dense reference rasteriser.

    nice -n 10 python benchmarks/raster.py            # the table (~10 minutes on 2 cores)
    nice -n 10 python benchmarks/raster.py --quick    # smaller, for a smoke test

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


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def worker(
    implementation: str, sketches: int, strokes: int, size: int, repeats: int, threads: int
) -> dict:
    """Measure one implementation in this (fresh) process; returns a JSON-able dict."""
    if implementation == "ours-torch":
        os.environ["SKETCHENV_RASTER"] = "torch"
    import torch

    if threads:
        torch.set_num_threads(threads)

    from sketchenv._raster_reference import naive_render_strokes
    from sketchenv.raster import render_strokes

    def render(s):
        if implementation == "naive":
            return naive_render_strokes(s, (s_size, s_size))
        return render_strokes(s, s_size)

    def step(points, weights):
        leaf = points.detach().requires_grad_()
        (render(leaf) * weights).sum().backward()
        return leaf.grad

    generator = torch.Generator().manual_seed(0)
    points = torch.rand(sketches, strokes, 4, generator=generator) * 2 - 1
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
    implementation: str, sketches: int, strokes: int, size: int, repeats: int, threads: int
) -> dict:
    command = [sys.executable, __file__, "--worker", implementation, str(sketches)]
    command += [str(strokes), str(size), "--repeats", str(repeats), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{implementation} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--naive-full", action="store_true", help="never shrink the naive run")
    parser.add_argument("--naive-sketches", type=int, default=10, help="naive batch at 224²")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--worker", nargs=4, metavar=("IMPL", "B", "N", "S"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        implementation, *sizes = args.worker
        print(json.dumps(worker(implementation, *map(int, sizes), args.repeats, args.threads)))
        return

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
            scale = sketches / run_sketches
            for key in ("wall_ms", "cpu_ms", "peak_mib"):
                result[key] *= scale
            result["scaled"] = scale != 1
            rows[implementation] = result
        naive = rows["naive"]
        for implementation, r in rows.items():
            mark = "*" if r["scaled"] else ""
            line = f"{label:<22}{implementation + mark:<16}"
            line += f"{r['wall_ms']:>10.1f}{r['cpu_ms']:>10.1f}{r['peak_mib']:>10.1f}"
            if implementation != "naive":
                speed = (
                    f"{naive['wall_ms'] / r['wall_ms']:.0f} / {naive['cpu_ms'] / r['cpu_ms']:.0f}"
                )
                line += f"{speed:>22}{naive['peak_mib'] / max(r['peak_mib'], 0.1):>15.0f}"
            print(line, flush=True)
    print(f"threads: {rows['ours']['threads']}; * = naive measured on fewer sketches, scaled")


if __name__ == "__main__":
    main()
