"""Inference throughput: our engine against the naive way, on the same model and frames.

The naive way is the authors' style (their predict.py): one frame at a time, cv2 resize,
``/255``, eager fp32 under ``torch.no_grad``, threshold, resize back; no batching. Our engine
runs the same weights through :class:`segmentation.inference.engine.InferenceEngine` (backend
``auto``: ONNX Runtime on CPU, bf16/fp16 autocast on GPU; batched; post-processing and
confidence included). Prints ONE summary line on stdout with both figures and their ratio,
and one line per backend (frames/s and max |p - p_eager|, mask Dice vs eager) on stderr.\nThe naive and engine passes are interleaved and the best of ``--repeats`` is kept (robust\nto other load on a shared machine).

    .venv/bin/python bench/inference.py [--arch manet --encoder efficientnet-b4 --size 512
                                         --frames 16 --batch 4 --device auto --model DIR]

Default: a randomly initialised MA-Net/EfficientNet-B4 at 512 px on 16 synthetic 1000x1000
uint8 frames (CPU on 2 cores: about 1-2 min including the one-off ONNX export, not timed).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from segmentation.inference.engine import InferenceEngine  # noqa: E402
from segmentation.inference.preprocess import to_model_input  # noqa: E402
from segmentation.metrics import dice  # noqa: E402
from segmentation.models.folder import ModelSpec, load_model_folder, save_model_folder  # noqa: E402
from segmentation.models.zoo import build_model  # noqa: E402

logger = logging.getLogger("bench.inference")


def synthetic_frames(n: int, size: int = 1000, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 frames (angiography-like intensity statistics: mean ~130, std ~36)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        low = rng.normal(0, 1, (size // 16, size // 16)).astype(np.float32)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        img = 130 + 36 * img / (img.std() + 1e-6) + rng.normal(0, 8, (size, size))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def naive_predict(model: torch.nn.Module, frames: np.ndarray, spec: ModelSpec, device: torch.device) -> list[np.ndarray]:
    """The authors' way: per frame resize, /255, fp32 forward under no_grad, threshold, resize back."""
    masks = []
    model = model.to(device).eval()
    for frame in frames:
        x, _ = to_model_input(frame, input_size=spec.input_size, padded_size=spec.padded_size,
                              in_channels=spec.in_channels, normalization=spec.normalization)
        with torch.no_grad():
            p = torch.sigmoid(model(torch.from_numpy(x).to(device)))[0, 0].cpu().numpy()
        off = (spec.padded_size - spec.input_size) // 2
        p = p[off:off + spec.input_size, off:off + spec.input_size]
        masks.append(cv2.resize((p >= 0.5).astype(np.uint8), frame.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0)
    return masks


def timed(fn, *args, **kwargs):
    """Run ``fn``; return (result, seconds)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="manet")
    parser.add_argument("--encoder", default="efficientnet-b4")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="auto", help="engine backend for the summary line")
    parser.add_argument("--breakdown", default="eager,bf16,onnx",
                        help="backends timed for the stderr breakdown ('' for none)")
    parser.add_argument("--model", type=Path, help="model folder (default: random init)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes of naive and engine (best kept)")
    parser.add_argument("--cache-dir", type=Path, help="ONNX cache dir (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    tmp = tempfile.TemporaryDirectory(prefix="taviseg-bench-")
    if args.model is None:
        torch.manual_seed(0)
        spec = ModelSpec(architecture=args.arch, encoder=args.encoder, input_size=args.size,
                         provenance={"source": "random initialisation (benchmark)"})
        save_model_folder(Path(tmp.name) / "model", spec, {0: build_model(args.arch, args.encoder).state_dict()})
        folder = load_model_folder(Path(tmp.name) / "model")
    else:
        folder = load_model_folder(args.model)
    spec = folder.spec
    cache = args.cache_dir or Path(tmp.name) / "onnx"
    frames = synthetic_frames(args.frames)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))

    # naive: one frame at a time, eager fp32 (one warm-up frame, not timed)
    model = folder.build(folder.folds[0], device=device)
    naive_predict(model, frames[:1], spec, device)

    def make_engine(backend: str) -> tuple[InferenceEngine, float]:
        engine, t_setup = timed(InferenceEngine.from_folder, folder, device=str(device), backend=backend,
                                batch_size=args.batch, folds=[folder.folds[0]], onnx_cache_dir=cache)
        engine.predict(frames[: min(args.batch, len(frames))])  # warm-up (ORT arena, autocast caches)
        return engine, t_setup

    # summary: per-frame (naive) and per-batch (engine) times over --repeats passes; the best
    # (minimum) per-frame time estimates the speed on a quiet machine, the median is also shown.
    # Naive runs first, then the engine: an ONNX Runtime session's spinning worker threads
    # would slow torch down if they ran interleaved.
    naive_times = [timed(naive_predict, model, frames[i:i + 1], spec, device)[1]
                   for _ in range(args.repeats) for i in range(len(frames))]
    engine, t_setup = make_engine(args.backend)
    engine_times = []
    for _ in range(args.repeats):
        for i in range(0, len(frames), args.batch):
            chunk = frames[i:i + args.batch]
            engine_times.append(timed(engine.predict, chunk)[1] / len(chunk))
    naive_fps, engine_fps = 1.0 / min(naive_times), 1.0 / min(engine_times)
    naive_med, engine_med = 1.0 / float(np.median(naive_times)), 1.0 / float(np.median(engine_times))
    name = engine.backend_name
    del engine

    print(f"inference breakdown: {spec.architecture}/{spec.encoder} {spec.input_size}px, "
          f"{len(frames)} frames {frames.shape[1]}x{frames.shape[2]}, batch {args.batch}, {device}, "
          f"{torch.get_num_threads()} threads; medians: naive {naive_med:.2f} frames/s, engine {engine_med:.2f} "
          f"frames/s ({engine_med / naive_med:.2f}x); engine {name} setup {t_setup:.1f} s", file=sys.stderr)
    results = {}
    sub = frames[: max(args.batch, min(8, len(frames)))]
    for backend in [b for b in args.breakdown.split(",") if b]:
        eng, t_set = make_engine(backend)
        per_frame, probs, masks = [], [], []
        for i in range(0, len(sub), args.batch):
            pred, t = timed(eng.predict, sub[i:i + args.batch], return_probabilities=True)
            per_frame.append(t / len(pred))
            probs.append(pred.probabilities)
            masks.append(pred.masks)
        results[backend] = (np.concatenate(probs), np.concatenate(masks))
        print(f"  backend {eng.backend_name:<10} {1 / min(per_frame):7.2f} frames/s  "
              f"(best {1000 * min(per_frame):.0f} ms/frame, {len(sub)} frames, setup {t_set:.1f} s)",
              file=sys.stderr)
        del eng
    if "eager" in results:
        ref_p, ref_m = results["eager"]
        for backend, (p, m) in results.items():
            if backend == "eager":
                continue
            diff = float(np.abs(p - ref_p).max())
            dices = [dice(a, b) for a, b in zip(m, ref_m)]
            print(f"  agreement {backend} vs eager fp32: max |dp| {diff:.2e}, mask Dice min {min(dices):.4f}",
                  file=sys.stderr)
    print(
        f"inference {spec.architecture}/{spec.encoder} {spec.input_size}px {device} "
        f"{torch.get_num_threads()} threads, {len(frames)} frames {frames.shape[1]}x{frames.shape[2]}: "
        f"naive (1 frame, eager fp32) {naive_fps:.2f} frames/s; engine ({name}, batch {args.batch}) "
        f"{engine_fps:.2f} frames/s; speed-up {engine_fps / naive_fps:.2f}x (best per-frame time of "
        f"{args.repeats} passes)"
    )
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
