"""ONNX Runtime's own forward pass against the whole engine, on the same model and batches.

What bounds the engine on a CPU (bench/inference.py, bench/RESULTS.md): the engine with the
``onnx`` backend resizes, batches, runs the model, post-processes (largest component, hole
filling) and computes confidences, overlapping the host work with the model on
``inference.host_threads`` threads. This script times (a) the ONNX Runtime session alone
(:class:`segmentation.inference.backends.OnnxBackend`, the engine's session options) on
ready-made input batches and (b) the engine on the same frames, interleaved, ``--repeats``
passes each, and prints ONE summary line on stdout (ms per frame, best and median of the
per-batch times), e.g.::

    onnx session alone manet/efficientnet-b4 512px batch 4: 283 ms/frame (median 290); engine 300 ms/frame
    (median 305); engine - session 17 ms/frame

    .venv/bin/python bench/onnx_session.py [--arch manet --encoder efficientnet-b4 --size 512
                                            --frames 16 --batch 4 --repeats 2]

Default: a randomly initialised MA-Net/EfficientNet-B4 at 512 px on the 16 synthetic 1000x1000
frames of bench/inference.py; about 1-2 min on 2 cores, the one-off ONNX export included.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# run as a script: the bench package is not installed
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.inference import synthetic_frames  # noqa: E402 - sys.path set above
from segmentation.inference.backends import OnnxBackend, cached_onnx_path  # noqa: E402 - sys.path set above
from segmentation.inference.engine import InferenceEngine  # noqa: E402 - sys.path set above
from segmentation.inference.preprocess import to_model_input  # noqa: E402 - sys.path set above
from segmentation.models.folder import ModelSpec, load_model_folder, save_model_folder  # noqa: E402 - sys.path set above
from segmentation.models.zoo import build_model  # noqa: E402 - sys.path set above


def main(argv: list[str] | None = None) -> int:
    """Time the session alone and the engine; one summary line on stdout. Returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="manet")
    parser.add_argument("--encoder", default="efficientnet-b4")
    parser.add_argument("--size", type=int, default=512, help="network input size (default 512)")
    parser.add_argument("--frames", type=int, default=16, help="1000x1000 frames (default 16)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes of each (default 2)")
    args = parser.parse_args(argv)
    if min(args.frames, args.batch, args.repeats) < 1:
        parser.error("--frames, --batch and --repeats must be >= 1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="taviseg-bench-onnx-") as tmp:
        torch.manual_seed(0)
        spec = ModelSpec(architecture=args.arch, encoder=args.encoder, input_size=args.size,
                         provenance={"source": "random initialisation (benchmark)"})
        save_model_folder(Path(tmp) / "model", spec, {0: build_model(args.arch, args.encoder).state_dict()})
        folder = load_model_folder(Path(tmp) / "model")
        spec = folder.spec
        cache = Path(tmp) / "onnx"
        engine = InferenceEngine.from_folder(folder, device="cpu", backend="onnx", batch_size=args.batch,
                                             folds=[folder.folds[0]], onnx_cache_dir=cache)
        session = OnnxBackend(cached_onnx_path(folder, folder.folds[0], cache))  # the file the engine exported
        frames = synthetic_frames(args.frames)
        inputs, _ = to_model_input(frames, input_size=spec.input_size, padded_size=spec.padded_size,
                                   in_channels=spec.in_channels, normalization=spec.normalization)
        batches = [slice(i, i + args.batch) for i in range(0, len(frames), args.batch)]
        session.logits(inputs[batches[0]])  # warm-up of both (memory arenas), not timed
        engine.predict(frames[batches[0]])
        per_frame: dict[str, list[float]] = {"session": [], "engine": []}
        for _ in range(args.repeats):
            for b in batches:
                n = len(frames[b])
                t0 = time.perf_counter()
                session.logits(inputs[b])
                per_frame["session"].append((time.perf_counter() - t0) / n)
                t0 = time.perf_counter()
                engine.predict(frames[b])
                per_frame["engine"].append((time.perf_counter() - t0) / n)
    best = {k: min(v) * 1e3 for k, v in per_frame.items()}
    med = {k: statistics.median(v) * 1e3 for k, v in per_frame.items()}
    print(f"onnx session alone {spec.architecture}/{spec.encoder} {spec.input_size}px batch {args.batch}, "
          f"{torch.get_num_threads()} threads: {best['session']:.0f} ms/frame (median {med['session']:.0f}); "
          f"engine {best['engine']:.0f} ms/frame (median {med['engine']:.0f}); "
          f"engine - session {best['engine'] - best['session']:.0f} ms/frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
