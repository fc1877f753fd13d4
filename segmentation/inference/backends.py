"""Execution backends: PyTorch eager (fp32 or bf16/fp16 autocast) and ONNX Runtime.

:class:`OnnxBackend` runs any ONNX file: the fp32 export below, or a model folder's int8
variant (``name="onnx-int8"``, see :mod:`segmentation.inference.quantize`). OpenVINO (bf16 on
CPUs with bf16 units) compiles the same fp32 export: :mod:`segmentation.inference.openvino_backend`.

A backend maps a preprocessed batch ``(N, C, P, P)`` float32 to logits ``(N, P, P)`` float32.
ONNX models are exported once per (weights hash, input size, exporter) and cached on disk:
``torch.onnx.export(dynamo=False, opset 17)`` for every architecture but PSPNet, whose adaptive
pooling only the dynamo exporter (opset 18) handles; a failing legacy export is retried with the
dynamo exporter.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from segmentation.errors import InferenceError
from segmentation.models.folder import ModelFolder
from tavicore.device import resolve_device as core_resolve_device
from tavicore.errors import DeviceError
from tavicore.fileio import write_bytes_atomic

logger = logging.getLogger(__name__)

LEGACY_OPSET = 17
DYNAMO_OPSET = 18
#: Architectures exported with the dynamo exporter first.
DYNAMO_FIRST = frozenset({"pspnet"})
ONNX_INPUT = "frames"
ONNX_OUTPUT = "logits"


class Backend(Protocol):
    """Maps a float32 batch ``(N, C, P, P)`` to float32 logits ``(N, P, P)``."""

    name: str

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on ``batch``."""
        ...


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """:func:`tavicore.device.resolve_device`, its error as an :class:`InferenceError`."""
    try:
        return core_resolve_device(device)
    except DeviceError as exc:
        raise InferenceError(str(exc)) from exc


def gpu_autocast_dtype() -> torch.dtype:
    """bf16 where the GPU supports it, else fp16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class TorchBackend:
    """PyTorch eager execution under ``torch.inference_mode``, optional autocast and channels-last.

    ``micro_batch``: frames per forward call (default: the whole batch, except fp32 on a CPU,
    where one frame at a time was measured faster: MA-Net/EfficientNet-B4 at 512 px, 2 threads,
    320 ms/frame at 1 vs 383 ms/frame at 4, channels-last).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = True,
        name: str = "eager",
        micro_batch: int | None = None,
    ) -> None:
        self.name = name
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        if micro_batch is None:
            micro_batch = 1 if (device.type == "cpu" and autocast_dtype is None) else 0
        self.micro_batch = int(micro_batch)
        model = model.to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run the model; returns float32 logits ``(N, P, P)``."""
        step = self.micro_batch if self.micro_batch > 0 else max(1, batch.shape[0])
        outputs = []
        for start in range(0, batch.shape[0], step):
            x = torch.from_numpy(np.ascontiguousarray(batch[start:start + step])).to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            autocast = (
                torch.autocast(self.device.type, dtype=self.autocast_dtype)
                if self.autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with torch.inference_mode(), autocast:
                y = self.model(x)
            outputs.append(y[:, 0].float().cpu().numpy())
        return np.concatenate(outputs, axis=0)


class OnnxBackend:
    """ONNX Runtime execution of an exported model file."""

    def __init__(
        self, path: Path, *, threads: int = 0, device: torch.device | None = None, name: str = "onnx"
    ) -> None:
        import onnxruntime as ort

        self.name = name
        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads) if threads > 0 else torch.get_num_threads()
        options.inter_op_num_threads = 1
        # idle workers sleep instead of spinning, leaving the cores to the engine's host threads
        # (pre/post-processing overlapped with the model): measured ~2% more frames/s on 2 cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device is not None and device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                logger.warning("onnxruntime has no CUDA provider here: running ONNX on the CPU")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise InferenceError(f"{self.path}: ONNX Runtime cannot load the model: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run the session; returns float32 logits ``(N, P, P)``."""
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out[:, 0], dtype=np.float32)


def onnx_cache_key(folder: ModelFolder, fold: int, exporter: str) -> str:
    """Cache key of an export: weights hash, architecture, input geometry, exporter, torch version."""
    spec = folder.spec
    parts = (
        folder.weights_hash(fold), spec.architecture, spec.encoder, str(spec.in_channels),
        str(spec.padded_size), exporter, torch.__version__,
    )
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _export_legacy(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(
        model, (example,), buf, dynamo=False, opset_version=LEGACY_OPSET,
        input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
        dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
    )
    return buf.getvalue()


#: Loggers of the dynamo exporter that report every graph pass at INFO level.
_EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's progress prints and per-pass INFO logs while it runs."""
    saved = {}
    for name in _EXPORTER_LOGGERS:
        log = logging.getLogger(name)
        saved[name] = log.level
        if log.getEffectiveLevel() < logging.WARNING:
            log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _export_dynamo(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet_exporter():
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, opset_version=DYNAMO_OPSET,
            input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
            dynamic_shapes={"x": {0: batch}}, verbose=False,
        )
    return program.model_proto.SerializeToString()


def export_onnx(model: torch.nn.Module, architecture: str, *, padded_size: int, in_channels: int) -> tuple[bytes, str]:
    """Export ``model`` (fp32, CPU) to ONNX with a dynamic batch axis.

    Returns:
        ``(serialized model, exporter name)`` with exporter ``"legacy-opset17"`` or ``"dynamo-opset18"``.

    Raises:
        InferenceError: both exporters failed (the message carries both errors).
    """
    model = model.to("cpu").float().eval()
    example = torch.zeros(2, in_channels, padded_size, padded_size)
    order = [("dynamo-opset18", _export_dynamo), ("legacy-opset17", _export_legacy)]
    if architecture not in DYNAMO_FIRST:
        order.reverse()
    errors = []
    for name, fn in order:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = fn(model, example)
        except Exception as exc:  # noqa: BLE001 - exporters raise many unrelated types; try the other one
            errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
            logger.info("ONNX export with %s failed (%s); trying the next exporter", name, type(exc).__name__)
            continue
        logger.info("exported %s to ONNX (%s) in %.1f s", architecture, name, time.perf_counter() - t0)
        return data, name
    raise InferenceError(f"ONNX export of {architecture} failed: {'; '.join(errors)}")


def cached_onnx_path(folder: ModelFolder, fold: int, cache_dir: Path) -> Path:
    """The exported ONNX file of ``fold``, exported now if not cached yet.

    The file is ``<cache_dir>/<arch>-<encoder>-<key>.onnx`` with the key from
    :func:`onnx_cache_key`; a cache dir that cannot be written is replaced by a private
    temporary folder (with a warning). Writes are atomic (temporary name + rename).

    Raises:
        InferenceError: export failed.
    """
    spec = folder.spec
    stem = f"{spec.architecture}-{spec.encoder}"
    preferred = "dynamo-opset18" if spec.architecture in DYNAMO_FIRST else "legacy-opset17"
    cache_dir = _writable_dir(Path(cache_dir))
    for exporter in (preferred, "dynamo-opset18" if preferred != "dynamo-opset18" else "legacy-opset17"):
        path = cache_dir / f"{stem}-{onnx_cache_key(folder, fold, exporter)}.onnx"
        if path.is_file():
            logger.debug("ONNX cache hit %s", path)
            return path
    model = folder.build(fold)
    data, exporter = export_onnx(model, spec.architecture, padded_size=spec.padded_size, in_channels=spec.in_channels)
    path = cache_dir / f"{stem}-{onnx_cache_key(folder, fold, exporter)}.onnx"
    write_bytes_atomic(path, data)
    logger.info("cached ONNX export %s (%.1f MB)", path, len(data) / 1e6)
    return path


_FALLBACK_DIRS: list[tempfile.TemporaryDirectory] = []


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe.", delete=True)
        probe.close()
        return path
    except OSError as exc:
        tmp = tempfile.TemporaryDirectory(prefix="taviseg-onnx-")
        _FALLBACK_DIRS.append(tmp)  # kept for the process lifetime
        logger.warning("ONNX cache dir %s is not writable (%s); using %s", path, exc, tmp.name)
        return Path(tmp.name)
