"""Phantom generation throughput on ONE core: our generator against the naive re-render.

Our generator (:func:`tavidata.phantom.generate_run`) draws the static scene of a run once
(anatomy, devices, thorax, optics) and then renders each frame with a weighted sum of the
heart layers, one smooth warp, a shift, noise and a tone LUT. The naive baseline rebuilds the
whole scene for every frame (what a per-frame renderer without a static cache does), then
renders that frame. Both run in this process on the same run settings, with OpenCV forced to
one thread. Prints ONE summary line on stdout:

    phantom bench: 1000x1000, 50 frames/run, 1 thread: generator 24.3 frames/s (scene 420 ms
    once + 21.5 ms/frame) | naive re-render 2.2 frames/s | ratio 11.0x

    .venv/bin/python bench/phantom.py [--size 1000] [--frames 50] [--naive-frames 8] [--seed 0]
                                      [--repeats 3]

The figures are the best of ``--repeats`` measurements (robust to other load on the machine).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tavidata.phantom.case import sample_patient, sample_run  # noqa: E402
from tavidata.phantom.cohort import generate_run, patient_seed  # noqa: E402
from tavidata.phantom.config import PhantomConfig  # noqa: E402
from tavidata.phantom.imaging import build_scene  # noqa: E402


def naive_run(config: PhantomConfig, seed: int, n_frames: int, n_rendered: int) -> float:
    """Seconds to render ``n_rendered`` frames of the run, rebuilding the scene for each one."""
    patient = sample_patient(np.random.default_rng([seed, 1]), config)
    started = time.perf_counter()
    for i in range(n_rendered):
        rng = np.random.default_rng([seed, 2, 0])
        case = sample_run(rng, config, patient, n_frames=n_frames)
        scene = build_scene(rng, case, patient)
        scene.render(case.timing.frame_times[i % n_frames], np.random.default_rng([seed, 3, i]))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000, help="frame size in px (default 1000)")
    parser.add_argument("--frames", type=int, default=50, help="frames of the generated run (default 50)")
    parser.add_argument("--naive-frames", type=int, default=8, help="frames rendered by the naive path (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="master seed")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many measurements (default 3)")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.naive_frames < 1 or args.repeats < 1 or args.size < 64:
        parser.error("--frames, --naive-frames and --repeats must be >= 1, --size >= 64")
    cv2.setNumThreads(1)
    config = PhantomConfig(size=args.size, seed=args.seed)
    seed = patient_seed(config, 0)
    generate_run(config, seed, 0, n_frames=2)  # warm-up (imports, allocator)

    ours, scene_s, per_frame, naive_s = float("inf"), float("inf"), float("inf"), float("inf")
    for _ in range(args.repeats):  # best of N: robust to other load on a shared machine
        started = time.perf_counter()
        run = generate_run(config, seed, 0, n_frames=args.frames)
        ours = min(ours, time.perf_counter() - started)

        patient = sample_patient(np.random.default_rng([seed, 1]), config)
        rng = np.random.default_rng([seed, 2, 0])
        case = sample_run(rng, config, patient, n_frames=args.frames)
        t0 = time.perf_counter()
        scene = build_scene(rng, case, patient)
        scene_s = min(scene_s, time.perf_counter() - t0)
        noise = np.random.default_rng([seed, 3, 0])
        t0 = time.perf_counter()
        for t in case.timing.frame_times:
            scene.render(t, noise)
        per_frame = min(per_frame, (time.perf_counter() - t0) / args.frames)

        naive_s = min(naive_s, naive_run(config, seed, args.frames, args.naive_frames))
    ours_fps = len(run.frames) / ours
    naive_fps = args.naive_frames / naive_s
    print(f"phantom bench: {args.size}x{args.size}, {args.frames} frames/run, 1 thread: generator "
          f"{ours_fps:.1f} frames/s (scene {scene_s * 1000:.0f} ms once + {per_frame * 1000:.1f} ms/frame) | "
          f"naive re-render {naive_fps:.2f} frames/s | ratio {ours_fps / naive_fps:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
