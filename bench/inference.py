"""Inference throughput: our engine against the naive way, on the same model and frames.

The naive way is the authors' style (their predict.py): one frame at a time, cv2 resize,
``/255``, eager fp32 under ``torch.no_grad``, threshold, resize back; no batching. Our engine
runs the same weights through :class:`segmentation.inference.engine.InferenceEngine` (backend
``auto``: on a CPU OpenVINO bf16 where the CPU has native bf16 and openvino is installed, else
ONNX Runtime fp32; bf16/fp16 autocast on GPU; batched; post-processing and confidence
included). Prints ONE summary line on stdout with both figures and their ratio, and one line
per backend (frames/s and max |p - p_eager|, mask Dice vs eager) on stderr.
The naive and engine passes are interleaved and the best of ``--repeats`` is kept (robust
to other load on a shared machine).

    .venv/bin/python bench/inference.py [--arch manet --encoder efficientnet-b4 --size 512
                                         --frames 16 --batch 4 --device auto --model DIR]

Default: a randomly initialised MA-Net/EfficientNet-B4 at 512 px on 16 synthetic 1000x1000
uint8 frames (CPU on 2 cores: about 1-2 min including the one-off ONNX export, not timed).

``--variants``: the CPU variants side by side, in one run on the same frames, for trained
MA-Net/EfficientNet-B4 and LinkNet/ResNet-18 at 512 px (``--models``): the naive loop, the
engine with ONNX Runtime fp32 (``onnx``), with the folder's int8 variant (``onnx-int8``, made
by :mod:`segmentation.inference.quantize` when missing, its accuracy check included), and,
where the ``openvino`` package is installed, the engine with OpenVINO
(:class:`segmentation.inference.openvino_backend.OpenVinoBackend`): fp32 (precision hint f32,
bench only), the product backend ``openvino-bf16`` built by the engine on CPUs with native bf16
(AVX512-BF16 or AMX; elsewhere OpenVINO's default precision, ``openvino-default``, bench only)
and, with ``nncf``, int8 (bench only). Frames: the held-out test patients of the bench's phantom
cohort (never trained or calibrated on). Weights: a short phantom training per model
(:mod:`bench.inference_models`, cached under ``--workdir``; first run 20-40 min on 2 busy cores).
Prints ONE summary line with each variant's frames/s, its ratio to the naive loop, and its
accuracy: mask Dice against eager fp32 through the same engine (median, worst frame) and the
change of the mean Dice against the ground truth::

    nice -n 10 .venv/bin/python bench/inference.py --variants [--frames 16 --repeats 3]
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

from segmentation.inference.backends import OnnxBackend  # noqa: E402 - after the sys.path line above (bench/ is not installed)
from segmentation.inference.engine import InferenceEngine  # noqa: E402 - after the sys.path line above (bench/ is not installed)
from segmentation.inference.openvino_backend import (  # noqa: E402 - after the sys.path line above (bench/ is not installed)
    OPENVINO_BF16,
    OpenVinoBackend,
    openvino_bf16_usable,
)
from segmentation.inference.preprocess import to_model_input  # noqa: E402 - after the sys.path line above (bench/ is not installed)
from segmentation.inference.quantize import (  # noqa: E402 - after the sys.path line above (bench/ is not installed)
    INT8_VARIANT,
    AccuracyCheckError,
    model_batches,
    quantize_model_folder,
)
from segmentation.metrics import dice  # noqa: E402 - after the sys.path line above (bench/ is not installed)
from segmentation.models.folder import ModelSpec, load_model_folder, save_model_folder  # noqa: E402 - after the sys.path line above (bench/ is not installed)
from segmentation.models.zoo import build_model  # noqa: E402 - after the sys.path line above (bench/ is not installed)

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


def naive_predict(model: torch.nn.Module, frames: np.ndarray, spec: ModelSpec,
                  device: torch.device) -> list[np.ndarray]:
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
    parser.add_argument("--variants", action="store_true",
                        help="compare the CPU variants (naive, ONNX fp32/int8, OpenVINO) on trained models")
    parser.add_argument("--models", default="manet/efficientnet-b4,linknet/resnet18",
                        help="--variants: ARCH/ENCODER,... (default: MA-Net/EfficientNet-B4 and LinkNet/ResNet-18)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="--variants: phantom and trained models (default runs/bench-inference)")
    parser.add_argument("--no-openvino", action="store_true", help="--variants: skip OpenVINO even if installed")
    parser.add_argument("--train-budget-s", type=float, default=720.0,
                        help="--variants: wall-time budget of each model's phantom training when it is not "
                             "cached yet (0: use the epochs already run; default 720)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.variants:
        return run_variants(args)

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


# ---------------------------------------------------------------------------- --variants
def openvino_int8(fp32_onnx: Path, batches: list[np.ndarray]):
    """The fp32 ONNX model quantised by NNCF (default preset, calibrated on ``batches``)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_onnx))
    return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))  # items are batches


def _spread(items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))]


def _versions(openvino_on: bool) -> str:
    import onnxruntime

    parts = [f"torch {torch.__version__}", f"onnxruntime {onnxruntime.__version__}"]
    if openvino_on:
        import openvino

        parts.append(f"openvino {openvino.__version__}")
        try:
            import nncf

            parts.append(f"nncf {nncf.__version__}")
        except ImportError:
            pass
    return ", ".join(parts)


def cpu_flags() -> str:
    """The SIMD extensions that matter for int8 (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c")]
    vnni = "vnni" if any("vnni" in f for f in flags) else "no vnni"
    return f"{' '.join(wanted) or 'no avx'} ({vnni})"


def run_variants(args: argparse.Namespace) -> int:
    """Naive loop against the engine's CPU variants on trained models; one summary line."""
    from bench.inference_models import (
        DEFAULT_WORKDIR,
        calibration_records,
        ensure_phantom,
        ensure_trained,
        test_records,
    )
    from segmentation.inference.backends import cached_onnx_path

    workdir = args.workdir or DEFAULT_WORKDIR
    cache = args.cache_dir or workdir / "onnx"
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    root = ensure_phantom(workdir)
    dataset, records = test_records(root)
    records = _spread(records, args.frames)
    frames = np.stack([dataset.read_image(r) for r in records])
    gts = [dataset.read_mask(r) for r in records]
    ids = [r.frame_id for r in records]
    openvino_on = False
    if not args.no_openvino:
        try:
            import openvino  # noqa: F401 - only probes whether it is installed

            openvino_on = True
        except ImportError:
            logger.warning("openvino not installed: OpenVINO not measured")
    parts = []
    for item in [m for m in args.models.split(",") if m]:
        arch, encoder = item.split("/")
        folder = load_model_folder(ensure_trained(workdir, arch, encoder, args.size, budget_s=args.train_budget_s))
        spec, fold = folder.spec, folder.folds[0]
        rejected: Path | None = None
        if folder.variant_file(INT8_VARIANT, fold) is None:
            rejected_dir = workdir / "rejected" / f"{arch}-{encoder}-{args.size}"
            try:
                report, t_q = timed(quantize_model_folder, folder, root, folds=[fold], onnx_cache_dir=cache,
                                    rejected_dir=rejected_dir)
                check_line = report.checks[0].describe()
                folder = load_model_folder(folder.path)  # the variant was written after this folder was read
            except AccuracyCheckError as exc:  # still timed, and reported as refused
                rejected, check_line = exc.report.files[fold], exc.report.checks[0].describe()
            print(f"  {arch}/{encoder}: quantised: {check_line}", file=sys.stderr)
        else:
            check = folder.variants[INT8_VARIANT].provenance["calibration"]["folds"][str(fold)]["check"]
            check_line = (f"int8 vs fp32 Dice median {check['median_dice_vs_fp32']:.4f}, worst "
                          f"{check['min_dice_vs_fp32']:.4f} ({check['worst_frame']}), GT Dice change "
                          f"{check['dice_change']:+.4f}: passed")
        engines: dict[str, InferenceEngine] = {}
        setups: dict[str, float] = {}
        product = ["eager", "onnx"] if rejected else ["eager", "onnx", INT8_VARIANT]
        if openvino_on and openvino_bf16_usable()[0]:
            product.append(OPENVINO_BF16)  # the product path: built by the engine itself
        for backend in product:
            engines[backend], setups[backend] = timed(
                InferenceEngine.from_folder, folder, device="cpu", backend=backend, batch_size=args.batch,
                folds=[fold], onnx_cache_dir=cache)
        if rejected:
            name = f"{INT8_VARIANT}-REFUSED"
            t0 = time.perf_counter()
            engines[name] = InferenceEngine(folder, {fold: OnnxBackend(rejected, threads=threads, name=name)},
                                            device=device, backend_name=name, batch_size=args.batch)
            setups[name] = time.perf_counter() - t0
        if openvino_on:
            fp32_onnx = cached_onnx_path(folder, fold, cache)
            ov_backends = {
                "openvino-fp32": lambda path=fp32_onnx: OpenVinoBackend(
                    path, threads=threads, name="openvino-fp32", precision="f32"),
            }
            if OPENVINO_BF16 not in engines:  # no native bf16 here: OpenVINO's own choice instead
                ov_backends["openvino-default"] = lambda path=fp32_onnx: OpenVinoBackend(
                    path, threads=threads, name="openvino-default", precision=None)
            try:
                import nncf  # noqa: F401 - only probes whether it is installed

                cal_images = [dataset.read_image(r) for r in _spread(calibration_records(root)[1], 32)]
                cal_batches = model_batches(folder, cal_images, args.batch)
                ov_backends["openvino-int8"] = lambda path=fp32_onnx, batches=cal_batches: OpenVinoBackend(
                    openvino_int8(path, batches), threads=threads, name="openvino-int8", precision=None)
            except ImportError:
                logger.warning("nncf not installed: OpenVINO int8 not measured")
            for name, make in ov_backends.items():
                t0 = time.perf_counter()
                backend = make()
                engines[name] = InferenceEngine(folder, {fold: backend}, device=device, backend_name=name,
                                                batch_size=args.batch)
                setups[name] = time.perf_counter() - t0
        model = folder.build(fold, device=device)
        naive_predict(model, frames[:1], spec, device)  # warm-up
        for eng in engines.values():
            eng.predict(frames[:args.batch])  # warm-up (ORT arena, OpenVINO first inference)
        times: dict[str, list[float]] = {name: [] for name in ["naive", *engines]}
        masks: dict[str, list[np.ndarray]] = {}
        for _ in range(args.repeats):  # interleaved passes: load changes hit every variant alike
            times["naive"] += [timed(naive_predict, model, frames[i:i + 1], spec, device)[1]
                               for i in range(len(frames))]
            for name, eng in engines.items():
                got = []
                for i in range(0, len(frames), args.batch):
                    pred, t = timed(eng.predict, frames[i:i + args.batch])
                    times[name].append(t / len(pred))
                    got.extend(pred.masks)
                masks[name] = got
        fps = {name: 1.0 / min(t) for name, t in times.items()}
        med = {name: 1.0 / float(np.median(t)) for name, t in times.items()}
        ref = masks["eager"]
        gt_ref = float(np.mean([dice(m, g) for m, g in zip(ref, gts)]))
        cells = [f"{arch}/{encoder} naive {fps['naive']:.2f} f/s"]
        for name in engines:
            if name == "eager":
                continue
            vs = np.asarray([dice(a, b) for a, b in zip(masks[name], ref)])
            gt = float(np.mean([dice(m, g) for m, g in zip(masks[name], gts)]))
            w = int(np.argmin(vs))
            cells.append(f"{name} {fps[name]:.2f} f/s {fps[name] / fps['naive']:.2f}x "
                         f"(vs fp32 Dice median {np.median(vs):.4f} worst {vs[w]:.4f} {ids[w]}; "
                         f"GT Dice {gt_ref:.4f} -> {gt:.4f} {gt - gt_ref:+.4f})")
            precision = getattr(next(iter(engines[name].backends.values())), "precision", "")
            print(f"  {arch}/{encoder} {name:<14} {precision} best {1000 / fps[name]:.0f} ms/frame, median "
                  f"{1000 / med[name]:.0f} ms/frame ({med[name] / med['naive']:.2f}x naive by medians), "
                  f"setup {setups[name]:.1f} s", file=sys.stderr)
        print(f"  {arch}/{encoder} naive          best {1000 / fps['naive']:.0f} ms/frame, median "
              f"{1000 / med['naive']:.0f} ms/frame; eager batched engine best {1000 / fps['eager']:.0f} ms/frame",
              file=sys.stderr)
        print(f"  {arch}/{encoder} quantiser's check on its own held-out frames: {check_line}", file=sys.stderr)
        parts.append("; ".join(cells))
        del engines, model
    print(
        f"inference CPU variants {args.size}px, {threads} threads, {len(frames)} held-out phantom frames "
        f"{frames.shape[1]}x{frames.shape[2]}, batch {args.batch}, best of {args.repeats} passes "
        f"[{_versions(openvino_on)}; cpu {cpu_flags()}]: " + " | ".join(parts)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
