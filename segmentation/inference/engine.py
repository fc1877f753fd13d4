"""The inference engine: a model folder + frames -> per-frame masks, confidences, probabilities.

Pipeline per batch of frames: :func:`~segmentation.inference.preprocess.to_model_input`
(any size / bit depth -> normalised, resized, padded batch) -> each selected fold's backend ->
sigmoid -> mean over folds (ensemble) and over the horizontally flipped copy (TTA) ->
crop/resize back to each frame's original size -> post-processing -> confidence.

The host-side steps run on ``host_threads`` worker threads while the model runs: the next
batch is prepared and the previous batch's frames are restored and post-processed per frame
in parallel (OpenCV and NumPy release the GIL), so on a GPU the CPU work of 1000x1000 frames
does not cap the frame rate, and on a CPU it fills the gaps the backend leaves. At most
``host_threads + 2`` batches are in flight; results keep the input order.

Backends (``backend=``): ``"eager"`` PyTorch fp32; ``"bf16"`` PyTorch bf16 autocast;
``"onnx"`` ONNX Runtime fp32 (export cached, see :mod:`segmentation.inference.backends`);
``"onnx-int8"`` ONNX Runtime on the model folder's int8 variant (written by
:mod:`segmentation.inference.quantize`, checked against eager fp32 when it was made), CPU only;
``"openvino-bf16"`` OpenVINO on the same cached fp32 ONNX export, compiled in bf16
(:mod:`segmentation.inference.openvino_backend`; the first compilation of an export is checked
against ONNX Runtime fp32 on synthetic frames and the result recorded beside the export), CPU
only, refused on a CPU without native bf16 (``avx512_bf16`` or ``amx_bf16``), without the
``openvino`` package, or when it fails to compile or fails its check;
``"auto"``: on a GPU eager with bf16 (or fp16) autocast; on a CPU the int8 variant when the
folder has a valid one for every selected fold, else ``openvino-bf16`` where the CPU has native
bf16 and openvino is importable, else ONNX Runtime fp32; each step falls back to the next with a
logged warning when it fails to load or compile, and to eager fp32 when the export fails. The
int8 variant and OpenVINO are never used on a GPU.
:attr:`InferenceEngine.backend_name` names what ran (``"onnx-int8"`` for the variant,
``"openvino-bf16"``...); predict's summary and the SR record it. Tested agreement with eager
fp32: ONNX probabilities within 1e-3 (max abs), bf16 masks Dice > 0.99, OpenVINO bf16 masks
Dice >= 0.98 (tiny random models; trained ones in bench/RESULTS.md); int8: the accuracy check
of the variant.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from segmentation.errors import InferenceError, ModelError
from segmentation.inference import cpu as cpu_mod
from segmentation.inference import openvino_backend
from segmentation.inference.backends import (
    Backend,
    OnnxBackend,
    TorchBackend,
    cached_onnx_path,
    gpu_autocast_dtype,
    resolve_device,
)
from segmentation.inference.confidence import frame_confidence
from segmentation.inference.config import (
    ConfidenceConfig,
    InferenceConfig,
    PostprocessConfig,
    default_onnx_cache_dir,
)
from segmentation.inference.openvino_backend import OPENVINO_BF16, check_frames, checked_openvino_bf16
from segmentation.inference.postprocess import postprocess_mask
from segmentation.inference.preprocess import (
    FrameInput,
    Geometry,
    as_frame_list,
    restore_probabilities,
    to_model_input,
)
from segmentation.models.folder import ModelFolder, load_model_folder

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "onnx", "onnx-int8", "openvino-bf16", "bf16")
#: The variant of a model folder run by backend ``onnx-int8`` (see segmentation.inference.quantize).
INT8_VARIANT = "onnx-int8"


@dataclass
class Prediction:
    """Per-frame results at each frame's original size.

    ``masks``: bool ``(N, H, W)`` (a list of 2-D arrays when the frames differ in size);
    ``confidence``: float32 ``(N,)`` (definition: :mod:`segmentation.inference.confidence`);
    ``probabilities``: float32 like ``masks`` when requested, else None;
    ``low_confidence``: bool ``(N,)``, confidence below the configured ``flag_below``.
    """

    masks: np.ndarray | list[np.ndarray]
    confidence: np.ndarray
    probabilities: np.ndarray | list[np.ndarray] | None = None
    low_confidence: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.confidence)


def _stack(items: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    if items and all(a.shape == items[0].shape for a in items):
        return np.stack(items)
    if not items:
        return np.zeros((0, 0, 0), np.float32)
    return items


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))).astype(np.float32)


def _check_batch(mf: ModelFolder) -> np.ndarray:
    """The preprocessed synthetic frames of the one-time OpenVINO bf16 check."""
    spec = mf.spec
    return to_model_input(check_frames(spec.input_size), input_size=spec.input_size, padded_size=spec.padded_size,
                          in_channels=spec.in_channels, normalization=spec.normalization)[0]


def int8_unsafe_here(mf: ModelFolder) -> str:
    """Why the folder's int8 variant must not run on this CPU ("" when it may): a variant with
    full 8-bit signed weights saturates in ONNX Runtime's u8 x s8 kernels on a CPU without VNNI or
    AMX-INT8 (segmentation.inference.cpu); one made with 7-bit (``int7``) or unsigned weights
    runs anywhere."""
    from segmentation.inference.quantize import variant_weight_type

    variant = mf.variants.get(INT8_VARIANT)
    if variant is None or variant_weight_type(variant.provenance) != "int8" or cpu_mod.cpu_has_int8_dot():
        return ""
    flags = ", ".join(sorted(cpu_mod.INT8_DOT_FLAGS))
    return (f"it has signed int8 weights and this CPU has no VNNI/AMX-INT8 ({flags} absent from "
            f"{cpu_mod.CPUINFO}), where ONNX Runtime's int8 kernels saturate; quantise again on this "
            f"machine (`taviseg model quantize {mf.path} --calibration DATA` picks 7-bit weights here)")


class InferenceEngine:
    """Runs a model folder on frames; build it with :meth:`from_folder` or :meth:`from_config`."""

    def __init__(
        self,
        folder: ModelFolder,
        backends: dict[int, Backend],
        *,
        device: torch.device,
        backend_name: str,
        batch_size: int = 8,
        tta: bool = False,
        postprocess: PostprocessConfig | None = None,
        confidence: ConfidenceConfig | None = None,
        host_threads: int = 2,
    ) -> None:
        if batch_size < 1:
            raise InferenceError(f"batch_size must be >= 1, got {batch_size}")
        if host_threads < 0:
            raise InferenceError(f"host_threads must be >= 0, got {host_threads}")
        self.host_threads = int(host_threads)
        self.folder = folder
        self.spec = folder.spec
        self.backends = backends
        self.device = device
        self.backend_name = backend_name
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        self.postprocess = postprocess or PostprocessConfig()
        self.confidence_config = confidence or ConfidenceConfig()

    @property
    def folds(self) -> tuple[int, ...]:
        """The folds ensembled by this engine."""
        return tuple(self.backends)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path | ModelFolder,
        *,
        device: str = "auto",
        backend: str = "auto",
        batch_size: int = 8,
        folds: tuple[int, ...] | list[int] | None = None,
        tta: bool = False,
        postprocess: PostprocessConfig | None = None,
        confidence: ConfidenceConfig | None = None,
        channels_last: bool = True,
        threads: int = 0,
        onnx_cache_dir: str | Path | None = None,
        host_threads: int = 2,
    ) -> InferenceEngine:
        """Load a model folder and prepare one backend per selected fold.

        Args:
            folder: Model folder path (or a loaded :class:`ModelFolder`).
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            backend: ``auto``, ``eager``, ``onnx``, ``onnx-int8``, ``openvino-bf16`` or ``bf16`` (see
                the module docstring).
            batch_size: Frames per forward pass.
            folds: Folds to ensemble (mean probability); None = all folds of the folder.
            tta: Add the horizontally flipped frames and average.
            postprocess: Post-processing switches (default: all on, the folder's threshold).
            confidence: Confidence settings.
            channels_last: Channels-last memory format for the eager backends.
            threads: CPU threads (0 = leave torch's setting; > 0 sets it process-wide).
            onnx_cache_dir: Where ONNX exports are cached (default: the user cache dir).
            host_threads: Threads that pre- and post-process frames while the model runs
                (0 = everything in the calling thread).

        Raises:
            ModelError: bad folder or unknown fold. InferenceError: unknown backend/device, an
                explicitly requested ONNX backend whose export failed, ``onnx-int8`` on a GPU
                or for a folder without a valid int8 variant, or ``openvino-bf16`` on a GPU, on a
                CPU without native bf16, without the openvino package, failing to compile or
                failing its check against fp32.
        """
        mf = folder if isinstance(folder, ModelFolder) else load_model_folder(folder)
        if backend not in BACKENDS:
            raise InferenceError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
        dev = resolve_device(device)
        if threads > 0:
            torch.set_num_threads(int(threads))
        selected = tuple(mf.folds if folds is None else (int(f) for f in folds))
        if not selected:
            raise ModelError(f"{mf.path}: no folds selected; folds present: {list(mf.folds)}")
        for fold in selected:
            mf.weights_path(fold)  # raises ModelError naming the folds present
        cache_dir = Path(onnx_cache_dir) if onnx_cache_dir is not None else default_onnx_cache_dir()
        t0 = time.perf_counter()
        backends, name = cls._make_backends(mf, selected, dev, backend, channels_last, threads, cache_dir)
        logger.info(
            "inference engine: %s/%s, backend %s on %s, folds %s, tta=%s (ready in %.1f s)",
            mf.spec.architecture, mf.spec.encoder, name, dev, list(selected), tta, time.perf_counter() - t0,
        )
        return cls(
            mf, backends, device=dev, backend_name=name, batch_size=batch_size, tta=tta,
            postprocess=postprocess, confidence=confidence, host_threads=host_threads,
        )

    @classmethod
    def from_config(cls, folder: str | Path | ModelFolder, config: InferenceConfig) -> InferenceEngine:
        """Build an engine from an :class:`InferenceConfig` (``conf/inference.yaml``)."""
        return cls.from_folder(
            folder, device=config.device, backend=config.backend, batch_size=config.batch_size,
            folds=config.folds, tta=config.tta, postprocess=config.postprocess,
            confidence=config.confidence, channels_last=config.channels_last,
            threads=config.threads, onnx_cache_dir=config.onnx_cache_dir,
            host_threads=config.host_threads,
        )

    @staticmethod
    def _make_backends(
        mf: ModelFolder,
        folds: tuple[int, ...],
        dev: torch.device,
        backend: str,
        channels_last: bool,
        threads: int,
        cache_dir: Path,
    ) -> tuple[dict[int, Backend], str]:
        if backend == INT8_VARIANT:
            if dev.type != "cpu":
                raise InferenceError(
                    f"backend {INT8_VARIANT!r} runs on the CPU only, the device is {dev}; "
                    "use backend 'auto' (or device 'cpu')"
                )
            missing = [f for f in folds if mf.variant_file(INT8_VARIANT, f) is None]
            if missing:
                raise InferenceError(
                    f"{mf.path}: backend {INT8_VARIANT!r} requested but folds {missing} have no valid int8 "
                    f"variant; make it with `taviseg model quantize {mf.path} --calibration DATA`"
                )
            why = int8_unsafe_here(mf)
            if why:
                raise InferenceError(f"{mf.path}: backend {INT8_VARIANT!r} requested but {why}")
            return {f: OnnxBackend(mf.variant_file(INT8_VARIANT, f), threads=threads, device=dev,
                                   name=INT8_VARIANT) for f in folds}, INT8_VARIANT
        if backend == "auto":
            if dev.type == "cuda":
                dtype = gpu_autocast_dtype()
                name = "eager-bf16" if dtype == torch.bfloat16 else "eager-fp16"
                return {
                    f: TorchBackend(mf.build(f), device=dev, autocast_dtype=dtype,
                                    channels_last=channels_last, name=name)
                    for f in folds
                }, name
            int8 = {f: mf.variant_file(INT8_VARIANT, f) for f in folds}
            if dev.type == "cpu" and all(p is not None for p in int8.values()):
                unsafe = int8_unsafe_here(mf)
                if unsafe:
                    logger.warning("int8 variant not used: %s", unsafe)
                else:
                    try:
                        return {f: OnnxBackend(p, threads=threads, device=dev, name=INT8_VARIANT)
                                for f, p in int8.items()}, INT8_VARIANT
                    except InferenceError as exc:
                        logger.warning("int8 variant unusable (%s); running the fp32 export", exc)
            try:
                paths = {f: cached_onnx_path(mf, f, cache_dir) for f in folds}
                if dev.type == "cpu":
                    usable, why = openvino_backend.openvino_bf16_usable()
                    if usable:
                        try:
                            return {f: checked_openvino_bf16(p, lambda: _check_batch(mf), mf.spec.threshold,
                                                             threads=threads)
                                    for f, p in paths.items()}, OPENVINO_BF16
                        except InferenceError as exc:
                            logger.warning("%s unavailable (%s); running ONNX Runtime fp32", OPENVINO_BF16, exc)
                    else:
                        logger.debug("%s not used: %s", OPENVINO_BF16, why)
                return {f: OnnxBackend(p, threads=threads, device=dev) for f, p in paths.items()}, "onnx"
            except InferenceError as exc:
                logger.warning("ONNX backend unavailable (%s); falling back to eager fp32", exc)
                backend = "eager"
        if backend == OPENVINO_BF16:
            if dev.type != "cpu":
                raise InferenceError(
                    f"backend {OPENVINO_BF16!r} runs on the CPU only, the device is {dev}; "
                    "use backend 'auto' (or device 'cpu')"
                )
            usable, why = openvino_backend.openvino_bf16_usable()
            if not usable:
                raise InferenceError(
                    f"backend {OPENVINO_BF16!r} requested but {why}; use backend 'auto' or 'onnx'"
                )
            return {f: checked_openvino_bf16(cached_onnx_path(mf, f, cache_dir), lambda: _check_batch(mf),
                                             mf.spec.threshold, threads=threads)
                    for f in folds}, OPENVINO_BF16
        if backend == "onnx":
            return {f: OnnxBackend(cached_onnx_path(mf, f, cache_dir), threads=threads, device=dev)
                    for f in folds}, "onnx"
        if backend == "bf16":
            if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise InferenceError(f"backend 'bf16' requested but {dev} does not support bf16")
            return {f: TorchBackend(mf.build(f), device=dev, autocast_dtype=torch.bfloat16,
                                    channels_last=channels_last, name="bf16") for f in folds}, "bf16"
        return {f: TorchBackend(mf.build(f), device=dev, autocast_dtype=None,
                                channels_last=channels_last, name="eager") for f in folds}, "eager"

    # ------------------------------------------------------------------ prediction
    def probabilities_at_model_size(self, batch: np.ndarray) -> np.ndarray:
        """Ensembled (and TTA-averaged) probabilities ``(N, P, P)`` of a preprocessed batch."""
        total = np.zeros((batch.shape[0], batch.shape[2], batch.shape[3]), np.float32)
        inputs = batch
        if self.tta:
            inputs = np.concatenate([batch, batch[..., ::-1]], axis=0)
        n = batch.shape[0]
        for backend in self.backends.values():
            probs = _sigmoid(backend.logits(inputs))
            if self.tta:
                total += 0.5 * (probs[:n] + probs[n:, :, ::-1])
            else:
                total += probs
        return total / np.float32(len(self.backends))

    def _prepare(self, chunk: list[np.ndarray], bits_stored: int | None):
        return to_model_input(
            chunk, input_size=self.spec.input_size, padded_size=self.spec.padded_size,
            in_channels=self.spec.in_channels, normalization=self.spec.normalization,
            bits_stored=bits_stored,
        )

    def _finish(self, probabilities: np.ndarray, shape: tuple[int, int], keep: bool):
        """One frame's network-size map -> (mask, confidence, map or None) at its original size."""
        geometry = Geometry(self.spec.input_size, self.spec.padded_size, (shape,))
        p = restore_probabilities(probabilities[None], geometry)[0]
        mask = postprocess_mask(p, self.postprocess, default_threshold=self.spec.threshold)
        conf = frame_confidence(p, mask, margin_fraction=self.confidence_config.margin_fraction)
        return mask, conf, (p if keep else None)

    def _iter_results(
        self, items: list[np.ndarray], bits_stored: int | None, keep: bool
    ) -> Iterator[tuple[np.ndarray, float, np.ndarray | None]]:
        """Per-frame ``(mask, confidence, map)`` in input order, host work overlapped with the model."""
        chunks = [items[s:s + self.batch_size] for s in range(0, len(items), self.batch_size)]
        if self.host_threads == 0:
            for chunk in chunks:
                batch, geometry = self._prepare(chunk, bits_stored)
                probs = self.probabilities_at_model_size(batch)
                for m, shape in zip(probs, geometry.original_shapes):
                    yield self._finish(m, shape, keep)
            return
        with ThreadPoolExecutor(self.host_threads, thread_name_prefix="taviseg-host") as pool:
            pending: deque[list[Future]] = deque()
            prepared = pool.submit(self._prepare, chunks[0], bits_stored) if chunks else None
            try:
                for i in range(len(chunks)):
                    batch, geometry = prepared.result()
                    prepared = pool.submit(self._prepare, chunks[i + 1], bits_stored) if i + 1 < len(chunks) else None
                    probs = self.probabilities_at_model_size(batch)
                    pending.append([pool.submit(self._finish, m, shape, keep)
                                    for m, shape in zip(probs, geometry.original_shapes)])
                    while len(pending) > self.host_threads + 1:  # bound the batches in flight
                        for fut in pending.popleft():
                            yield fut.result()
                while pending:
                    for fut in pending.popleft():
                        yield fut.result()
            finally:
                for fut in [f for batch_futs in pending for f in batch_futs] + ([prepared] if prepared else []):
                    fut.cancel()

    def predict(
        self,
        frames: FrameInput,
        *,
        return_probabilities: bool = False,
        bits_stored: int | None = None,
    ) -> Prediction:
        """Segment frames.

        Args:
            frames: ``(N, H, W)`` or ``(H, W)`` array, or a list of 2-D arrays; uint8, 10-16 bit
                integers, bool or float in [0, 1] (see :func:`normalize_frames`).
            return_probabilities: Also return the probability maps (original size).
            bits_stored: Bits Stored of integer frames (DICOM), if known.

        Returns:
            A :class:`Prediction` (masks at the original size).

        Raises:
            InferenceError: malformed frames.
        """
        masks: list[np.ndarray] = []
        probs_out: list[np.ndarray] = []
        conf: list[float] = []
        for mask, c, p in self._iter_results(as_frame_list(frames), bits_stored, return_probabilities):
            masks.append(mask)
            conf.append(c)
            if return_probabilities:
                probs_out.append(p)
        confidence = np.asarray(conf, np.float32)
        return Prediction(
            masks=_stack(masks) if masks else np.zeros((0, 0, 0), bool),
            confidence=confidence,
            probabilities=_stack(probs_out) if return_probabilities else None,
            low_confidence=confidence < np.float32(self.confidence_config.flag_below),
        )
