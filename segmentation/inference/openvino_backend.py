"""OpenVINO backend: the model's fp32 ONNX export compiled for the CPU in bf16.

Measured in bench/RESULTS.md ("Inference on CPU: int8 and OpenVINO", issue 20): on a CPU with
bf16 units (AVX512-BF16 or AMX) OpenVINO's bf16 path ran MA-Net/EfficientNet-B4 and
LinkNet/ResNet-18 at 512 px 1.8x faster than ONNX Runtime fp32 within the accuracy targets
(mask Dice against fp32 median 0.998); forced to f32 it was no faster than ONNX Runtime. So
the engine uses it only where the CPU computes bf16 natively (:func:`cpu_has_native_bf16`) and
the ``openvino`` package is importable (:func:`openvino_bf16_usable`); elsewhere ONNX Runtime
fp32 stays the CPU backend.

:class:`OpenVinoBackend` compiles an ONNX file (or an ``openvino.Model``, e.g. an NNCF int8
model in the bench) on OpenVINO's CPU plugin with the LATENCY hint, the configured number of
inference threads and, for ``openvino-bf16``, the inference precision hint ``bf16``; the batch
axis stays dynamic. It checks that the compiled model really runs the requested precision
(OpenVINO may silently choose another one), so the name the engine records is what ran.

:func:`checked_openvino_bf16` is what the engine builds: the first time an export is compiled in
bf16 (per openvino version and mask threshold) it compares the output with ONNX Runtime fp32 on
two synthetic frames and records the result beside the export (``<export>.openvino-bf16.json``,
like the int8 variant's check in ``variants.json``); a failed check refuses the backend, and
``backend: auto`` then runs ONNX Runtime fp32 with a logged warning. The check guards against a
broken compilation; accuracy on real frames is the bench's figure.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmentation.errors import InferenceError
from segmentation.inference.backends import OnnxBackend
from segmentation.inference.cpu import CPUINFO, NATIVE_BF16_FLAGS, cpu_has_native_bf16
from tavicore.fileio import write_text_atomic

logger = logging.getLogger(__name__)

#: The engine's backend name for OpenVINO in bf16 (recorded in predict's summary and the SR).
OPENVINO_BF16 = "openvino-bf16"


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def openvino_bf16_usable() -> tuple[bool, str]:
    """Whether backend ``openvino-bf16`` can run here, and if not, why (for messages)."""
    if not openvino_installed():
        return False, "the openvino package is not installed"
    if not cpu_has_native_bf16():
        return False, (
            f"this CPU has no native bf16 (none of {', '.join(sorted(NATIVE_BF16_FLAGS))} in the flags of "
            f"{CPUINFO}); OpenVINO would run f32 there, which is no faster than backend 'onnx'"
        )
    return True, ""


#: The one-time agreement check of a bf16 compilation against ONNX Runtime fp32 (see
#: :func:`check_against_fp32`): a guard against a broken compilation (wrong output, NaN,
#: overflow), not the accuracy figures, which come from the bench on held-out phantom frames.
CHECK_FRAMES = 2
CHECK_MAX_MEAN_ABS = 0.02  # mean |p_bf16 - p_fp32| over all pixels
CHECK_MAX_FLIPPED = 0.02  # share of pixels whose mask (p >= threshold) differs
CHECK_SUFFIX = ".openvino-bf16.json"


class OpenVinoBackend:
    """An engine backend on OpenVINO's CPU plugin.

    Args:
        model: An ONNX file (fp32 export) or an ``openvino.Model``.
        threads: Inference threads (0 = torch's thread count, as for ONNX Runtime).
        name: The backend name recorded by the engine.
        precision: ``INFERENCE_PRECISION_HINT`` (``"bf16"``, ``"f32"``); None = OpenVINO's
            default (bf16 on CPUs with bf16 units, else f32).

    Raises:
        InferenceError: openvino not importable, the model does not read or compile, or the
            compiled model runs another precision than ``precision``.
    """

    def __init__(
        self, model: str | Path | Any, *, threads: int = 0, name: str = OPENVINO_BF16, precision: str | None = "bf16"
    ) -> None:
        where = str(model) if isinstance(model, (str, Path)) else f"OpenVINO model {name}"
        try:
            import openvino as ov
        except ImportError as exc:
            raise InferenceError(f"backend {name!r} needs the openvino package: {exc}") from exc
        self.name = name
        self.path = Path(model) if isinstance(model, (str, Path)) else None
        self.threads = int(threads) if threads > 0 else torch.get_num_threads()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            core = ov.Core()
            if self.path is not None:
                model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, "CPU", config)
            ran = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
            self.precision = ran.get_type_name() if hasattr(ran, "get_type_name") else str(ran)
            self.request = self.compiled.create_infer_request()
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own types
            raise InferenceError(f"{where}: OpenVINO cannot compile the model for the CPU: {exc}") from exc
        if precision is not None and self.precision != precision:
            raise InferenceError(
                f"{where}: OpenVINO compiled the model in {self.precision}, not the requested {precision}"
            )
        # one infer request, whose output memory is reused: one caller at a time, results copied
        self._lock = threading.Lock()
        logger.debug("OpenVINO compiled %s for the CPU (%s, %d threads)", where, self.precision, self.threads)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run the compiled model; returns float32 logits ``(N, P, P)``."""
        with self._lock:
            self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
            out = self.request.get_output_tensor(0).data
            return np.array(out[:, 0], dtype=np.float32, copy=True)


def check_frames(input_size: int, n: int = CHECK_FRAMES, seed: int = 0) -> np.ndarray:
    """``n`` deterministic uint8 frames ``(n, S, S)``: smooth blobs of every grey level (synthetic)."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        coarse = rng.random((6, 6)).astype(np.float32)
        field = cv2.resize(coarse, (input_size, input_size), interpolation=cv2.INTER_CUBIC)
        field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
        frames.append(np.round(255 * field).astype(np.uint8))
    return np.stack(frames)


def check_against_fp32(
    backend: OpenVinoBackend, reference, batch: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Compare ``backend`` with ``reference`` (ONNX Runtime fp32) on a preprocessed ``batch``.

    Returns:
        A JSON-able record: ``mean_abs``, ``max_abs`` (probabilities), ``flipped`` (share of
        pixels whose mask differs at ``threshold``), ``finite`` and ``passed``.
    """
    def probs(logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -80.0, 80.0)))

    got, ref = backend.logits(batch), reference.logits(batch)
    finite = bool(np.isfinite(got).all())
    p, q = probs(np.nan_to_num(got, nan=0.0)), probs(ref)
    diff = np.abs(p - q)
    flipped = float(np.mean((p >= threshold) != (q >= threshold)))
    mean_abs = float(diff.mean())
    return {
        "frames": int(batch.shape[0]), "size": int(batch.shape[-1]), "precision": backend.precision,
        "mean_abs": round(mean_abs, 6), "max_abs": round(float(diff.max()), 6), "flipped": round(flipped, 6),
        "finite": finite, "limits": {"mean_abs": CHECK_MAX_MEAN_ABS, "flipped": CHECK_MAX_FLIPPED},
        "passed": finite and mean_abs <= CHECK_MAX_MEAN_ABS and flipped <= CHECK_MAX_FLIPPED,
    }


def checked_openvino_bf16(onnx_path: Path, batch_fn, threshold: float, *, threads: int = 0) -> OpenVinoBackend:
    """An ``openvino-bf16`` backend of ``onnx_path`` (the cached fp32 export), checked once against fp32.

    The first time an export is compiled in bf16 (per openvino version), its output on
    :func:`check_frames` is compared with ONNX Runtime fp32 (:func:`check_against_fp32`) and the
    record written beside the export (``<export>.openvino-bf16.json``); later builds read it.

    Args:
        onnx_path: The fp32 ONNX export.
        batch_fn: Returns the preprocessed check batch (called only when a check runs).
        threshold: The model's mask threshold.
        threads: Inference threads (0 = torch's).

    Raises:
        InferenceError: no compilation, or the check failed (now or when recorded).
    """
    import openvino as ov

    backend = OpenVinoBackend(onnx_path, threads=threads)
    record_path = Path(onnx_path).with_name(Path(onnx_path).stem + CHECK_SUFFIX)
    version = ov.get_version()
    record: dict[str, Any] | None = None
    try:
        saved = json.loads(record_path.read_text())
        if saved.get("openvino") == version and saved.get("threshold") == threshold:
            record = saved
    except (OSError, ValueError):
        pass
    if record is None:
        record = check_against_fp32(backend, OnnxBackend(Path(onnx_path), threads=threads), batch_fn(), threshold)
        record.update({"openvino": version, "threshold": threshold})
        try:
            write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")
        except OSError as exc:
            logger.warning("%s: cannot record the bf16 check (%s)", record_path, exc)
        logger.info("%s: bf16 against fp32 on %d synthetic frames: mean |dp| %.4f, mask pixels flipped %.4f (%s)",
                    onnx_path, record["frames"], record["mean_abs"], record["flipped"],
                    "passed" if record["passed"] else "FAILED")
    if not record.get("passed"):
        raise InferenceError(
            f"{onnx_path}: OpenVINO bf16 disagrees with fp32 on the check frames (mean |dp| {record['mean_abs']}, "
            f"limit {CHECK_MAX_MEAN_ABS}; mask pixels flipped {record['flipped']}, limit {CHECK_MAX_FLIPPED}; "
            f"finite {record['finite']}; recorded in {record_path})"
        )
    return backend
