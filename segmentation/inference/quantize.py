"""Static int8 quantisation of a model folder for CPU inference, with a built-in accuracy check.

:func:`quantize_model_folder` makes, per fold, the variant ``onnx-int8`` of a model folder:

1. the fp32 ONNX export the engine runs (:func:`~segmentation.inference.backends.cached_onnx_path`);
2. ``onnxruntime.quantization.shape_inference.quant_pre_process`` (shape inference, graph
   optimisation);
3. ``quantize_static``: QDQ format, per-channel weights (signed int8 where the CPU has VNNI or
   AMX-INT8, unsigned elsewhere: the u8 x s8 kernels of AVX2 saturate), uint8 activations, ranges
   calibrated (MinMax by default) on frames of a data set (:class:`tavidata.format.Dataset`)
   preprocessed exactly as the engine preprocesses them
   (:func:`~segmentation.inference.preprocess.to_model_input` with the folder's spec). The node
   that produces the logits (the segmentation head) stays in floating point, so the threshold
   is applied to unquantised logits;
4. the accuracy check on held-out frames (other patients than the calibration frames): masks of
   the int8 model against masks of eager fp32 PyTorch, both through the whole engine
   (post-processing included), per frame: median Dice >= ``min_median_dice`` (0.99), the worst
   frame reported; and the change of the model's mean Dice against the ground truth masks
   within ``max_dice_change`` (0.005).

Only when every fold passes are the int8 files written into the folder, listed in
``variants.json`` with their provenance (data set, frames, method, settings, check results,
versions of onnxruntime/onnx/torch); otherwise :class:`AccuracyCheckError` is raised and the
folder is left as it was.

Calibration and check frames: when the data set has ``splits.json`` with the fold being
quantised, calibration uses that fold's training patients (the frames the model was trained
on) and the check uses its test patients; otherwise the patients are split in two, seeded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segmentation.errors import InferenceError
from segmentation.models.folder import ModelFolder, load_model_folder, save_variant
from tavidata.format import Dataset, FrameRecord

logger = logging.getLogger(__name__)

#: Name of the int8 variant in a model folder's ``variants.json``.
INT8_VARIANT = "onnx-int8"
#: Weight types. ``int8``: signed int8 (u8 x s8, fastest) for a CPU with a non-saturating int8 dot
#: product (VNNI, AMX). ``int7``: signed int8 weights in 7 bits (ONNX Runtime's ``reduce_range``):
#: the u8 x s8 kernels of AVX2 add pairs of u8 x s8 products in 16 bits, which saturate with 8-bit
#: weights (255 x 127 x 2 > 32767) but not with 7-bit ones (255 x 64 x 2 < 32767), so the fast
#: kernel stays exact there. ``uint8``: u8 x u8 (no saturation, slower kernels on AVX2).
WEIGHT_TYPES = ("int8", "int7", "uint8")


def method_text(weight_type: str) -> str:
    """The provenance's one-line description of how a variant was quantised."""
    weights = "int8 weights in 7 bits (reduce_range)" if weight_type == "int7" else f"{weight_type} weights"
    return (f"onnxruntime quantize_static, QDQ, per-channel {weights}, uint8 activations, "
            "after quant_pre_process")


def default_weight_type() -> str:
    """``int8`` on a CPU with VNNI/AMX-INT8, else ``int7`` (see :data:`WEIGHT_TYPES`)."""
    from segmentation.inference.cpu import cpu_has_int8_dot

    return "int8" if cpu_has_int8_dot() else "int7"


def variant_weight_type(provenance: dict[str, Any]) -> str:
    """The weight type a variant was made with (variants from before the choice: ``int8``)."""
    return str(provenance.get("weight_type", "int8"))
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class QuantizationError(InferenceError):
    """Quantisation could not run: unusable calibration data, export or ONNX Runtime failure."""


class AccuracyCheckError(QuantizationError):
    """The int8 model failed the accuracy check; nothing was written. ``report`` holds the figures."""

    def __init__(self, message: str, report: QuantizeReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class QuantizeSettings:
    """How to calibrate and check (defaults: the targets of issue 20)."""

    calibration_frames: int = 32
    check_frames: int = 24
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    min_median_dice: float = 0.99
    max_dice_change: float = 0.005
    batch_size: int = 4
    keep_head_float: bool = True
    #: Operator types quantised (None: every type ONNX Runtime can quantise; ("Conv",): only the
    #: convolutions, the element-wise operations between them staying in float).
    op_types: tuple[str, ...] | None = None
    #: ``int8``, ``int7`` or ``uint8`` weights; None: :func:`default_weight_type` (by this CPU's flags).
    weight_type: Literal["int8", "int7", "uint8"] | None = None
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.calibrate_method not in CALIBRATION_METHODS:
            raise QuantizationError(
                f"calibrate_method {self.calibrate_method!r}; valid: {', '.join(CALIBRATION_METHODS)}"
            )
        if self.weight_type is not None and self.weight_type not in WEIGHT_TYPES:
            raise QuantizationError(f"weight_type {self.weight_type!r}; valid: {', '.join(WEIGHT_TYPES)}")
        if self.calibration_frames < 1 or self.check_frames < 1 or self.batch_size < 1:
            raise QuantizationError(
                f"calibration_frames, check_frames and batch_size must be >= 1, got "
                f"{self.calibration_frames}, {self.check_frames}, {self.batch_size}"
            )
        if not 0.0 <= self.min_median_dice <= 1.0 or self.max_dice_change < 0.0:
            raise QuantizationError(
                f"min_median_dice must be in [0, 1] and max_dice_change >= 0, got "
                f"{self.min_median_dice}, {self.max_dice_change}"
            )


@dataclass
class FoldCheck:
    """The accuracy check of one fold's int8 model on held-out frames."""

    fold: int
    frames: int
    median_dice_vs_fp32: float
    min_dice_vs_fp32: float
    worst_frame: str
    fp32_dice_gt: float | None
    int8_dice_gt: float | None
    passed: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def dice_change(self) -> float | None:
        """int8 mean Dice against ground truth minus fp32's (None without ground truth)."""
        if self.fp32_dice_gt is None or self.int8_dice_gt is None:
            return None
        return self.int8_dice_gt - self.fp32_dice_gt

    def to_json_dict(self) -> dict[str, Any]:
        """The figures as JSON (provenance)."""
        return {**dataclasses.asdict(self), "dice_change": self.dice_change}

    def describe(self) -> str:
        """One line: the figures and the verdict."""
        gt = ""
        if self.dice_change is not None:
            gt = (f"; Dice vs ground truth fp32 {self.fp32_dice_gt:.4f}, int8 {self.int8_dice_gt:.4f} "
                  f"(change {self.dice_change:+.4f})")
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.reasons)
        return (f"fold {self.fold}: {self.frames} held-out frames, int8 vs fp32 mask Dice median "
                f"{self.median_dice_vs_fp32:.4f}, worst {self.min_dice_vs_fp32:.4f} ({self.worst_frame}){gt}: "
                f"{verdict}")


@dataclass
class QuantizeReport:
    """What :func:`quantize_model_folder` did."""

    folder: Path
    variant: str
    checks: list[FoldCheck]
    calibration: dict[str, Any]
    written: bool = False
    seconds: float = 0.0
    files: dict[int, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every fold passed the accuracy check."""
        return bool(self.checks) and all(c.passed for c in self.checks)


def versions() -> dict[str, str]:
    """Versions of the libraries that made a variant."""
    import onnx
    import onnxruntime
    import torch

    from tavicore import __version__

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
            "taviseg": __version__}


# ---------------------------------------------------------------------------- frame selection
def _spread(records: Sequence[FrameRecord], n: int) -> list[FrameRecord]:
    """At most ``n`` records evenly spread over ``records`` (keeps the order; deterministic)."""
    if len(records) <= n:
        return list(records)
    idx = np.unique(np.linspace(0, len(records) - 1, n).round().astype(int))
    return [records[i] for i in idx]


def select_frames(
    dataset: Dataset, fold: int, settings: QuantizeSettings
) -> tuple[list[FrameRecord], list[FrameRecord], str]:
    """Calibration and check frames of ``fold``: from different patients.

    Returns:
        ``(calibration records, check records, how they were chosen)``.

    Raises:
        QuantizationError: fewer than two patients, or no frames on either side.
    """
    from tavidata.errors import DatasetError, SplitError
    from tavidata.splits import load_splits

    calibration_patients: Sequence[str] | None = None
    check_patients: Sequence[str] | None = None
    how = ""
    splits_file = Path(dataset.root) / "splits.json"
    if splits_file.is_file():
        try:
            split = load_splits(splits_file).fold(fold)
        except (SplitError, DatasetError) as exc:
            logger.warning("%s: not used to choose frames (%s); splitting the patients instead", splits_file, exc)
        else:
            calibration_patients, check_patients = split.train, split.test
            how = f"splits.json fold {fold}: calibration on its training patients, check on its test patients"
    if calibration_patients is None:
        patients = list(dataset.patients)
        if len(patients) < 2:
            raise QuantizationError(
                f"{dataset.root}: {len(patients)} patient(s); calibration and check need two at least"
            )
        order = np.random.default_rng(settings.seed).permutation(len(patients))
        half = max(1, len(patients) // 2)
        calibration_patients = [patients[i] for i in order[:half]]
        check_patients = [patients[i] for i in order[half:]]
        how = f"patients split in two (seed {settings.seed}): calibration on one half, check on the other"
    calibration = _spread(dataset.frames_of(calibration_patients), settings.calibration_frames)
    check = _spread(dataset.frames_of(check_patients or []), settings.check_frames)
    if not calibration or not check:
        raise QuantizationError(
            f"{dataset.root}: {len(calibration)} calibration and {len(check)} check frame(s) for fold {fold}; "
            "need at least one of each"
        )
    return calibration, check, how


def _read(records: Sequence[FrameRecord]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    images = [Dataset.read_image(r) for r in records]
    masks = [Dataset.read_mask(r) if r.mask is not None else None for r in records]
    return images, masks


# ---------------------------------------------------------------------------- quantisation
class _Batches:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over preprocessed batches.

    It has ``len`` and ``set_range`` so that ``quantize_static`` with ``CalibStridedMinMax``
    collects one batch at a time and merges the ranges: the calibration model's outputs (every
    intermediate tensor) are then held for one batch only, not for all of them at once.
    """

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = batches
        self._it: Iterator[np.ndarray] = iter(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}


def model_batches(folder: ModelFolder, images: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Frames preprocessed as the engine does (the folder's size, padding, normalisation)."""
    from segmentation.inference.preprocess import to_model_input

    spec = folder.spec
    return [
        to_model_input(list(images[s:s + batch_size]), input_size=spec.input_size, padded_size=spec.padded_size,
                       in_channels=spec.in_channels, normalization=spec.normalization)[0]
        for s in range(0, len(images), batch_size)
    ]


def _head_nodes(model_path: Path) -> list[str]:
    """Names of the nodes that produce the graph's outputs (kept in floating point)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if n.name and outputs.intersection(n.output)]


class _DropQuantizerInfo(logging.Filter):
    """Drops the INFO records ONNX Runtime's quantiser logs on the root logger (one per bias copy)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or "onnxruntime" not in record.pathname


def quantize_onnx(
    fp32_path: Path, out_path: Path, batches: list[np.ndarray], settings: QuantizeSettings, work_dir: Path
) -> dict[str, Any]:
    """Pre-process and statically quantise one fp32 ONNX file to ``out_path``.

    Returns:
        What was done (nodes kept in float), for the provenance.

    Raises:
        QuantizationError: ONNX Runtime's pre-processing or quantisation failed.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    pre = work_dir / "preprocessed.onnx"
    pre_process = "quant_pre_process (symbolic and ONNX shape inference, graph optimisation)"
    try:
        quant_pre_process(str(fp32_path), str(pre))
    except Exception as first:  # noqa: BLE001  (onnxruntime/onnx raise many types here)
        # ONNX Runtime's symbolic shape inference gives up on some graphs (MA-Net/EfficientNet-B4:
        # "Incomplete symbolic shape inference"); ONNX's own shape inference is enough for a CNN
        logger.info("quant_pre_process failed (%s: %s); retrying without symbolic shape inference",
                    type(first).__name__, first)
        pre_process = "quant_pre_process without symbolic shape inference (ONNX shape inference, graph optimisation)"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception as exc:
            raise QuantizationError(
                f"{fp32_path}: quant_pre_process failed: {type(first).__name__}: {first}; "
                f"without symbolic shape inference: {type(exc).__name__}: {exc}"
            ) from exc
    exclude = _head_nodes(pre) if settings.keep_head_float else []
    from segmentation.inference.backends import ONNX_INPUT

    quiet = _DropQuantizerInfo()
    logging.getLogger().addFilter(quiet)  # a root-logger filter sees only records logged on root
    try:
        quantize_static(
            str(pre), str(out_path), _Batches(ONNX_INPUT, batches),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=settings.weight_type == "int7",
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if settings.weight_type == "uint8" else QuantType.QInt8,
            calibrate_method=methods[settings.calibrate_method], nodes_to_exclude=exclude,
            op_types_to_quantize=list(settings.op_types) if settings.op_types else None,
            extra_options={"CalibStridedMinMax": 1},  # one batch at a time, ranges merged
        )
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph and plain errors
        raise QuantizationError(f"{fp32_path}: quantize_static failed: {type(exc).__name__}: {exc}") from exc
    finally:
        logging.getLogger().removeFilter(quiet)
    return {"pre_process": pre_process, "nodes_kept_float": exclude}


# ---------------------------------------------------------------------------- accuracy check
def check_fold(
    folder: ModelFolder,
    fold: int,
    int8_path: Path,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    frame_ids: Sequence[str],
    settings: QuantizeSettings,
) -> FoldCheck:
    """Compare the int8 model with eager fp32 PyTorch on ``images`` through the whole engine."""
    import torch

    from segmentation.inference.backends import OnnxBackend, TorchBackend
    from segmentation.inference.engine import InferenceEngine
    from segmentation.metrics import dice

    cpu = torch.device("cpu")
    common = {"device": cpu, "batch_size": settings.batch_size, "host_threads": 0}
    fp32 = InferenceEngine(folder, {fold: TorchBackend(folder.build(fold), device=cpu, name="eager")},
                           backend_name="eager", **common)
    int8 = InferenceEngine(folder, {fold: OnnxBackend(int8_path, threads=settings.threads, device=cpu)},
                           backend_name=INT8_VARIANT, **common)
    ref = fp32.predict(list(images)).masks
    got = int8.predict(list(images)).masks
    vs_fp32 = np.asarray([dice(a, b) for a, b in zip(got, ref)])
    worst = int(np.argmin(vs_fp32))
    with_gt = [i for i, m in enumerate(masks) if m is not None]
    fp32_gt = float(np.mean([dice(ref[i], masks[i]) for i in with_gt])) if with_gt else None
    int8_gt = float(np.mean([dice(got[i], masks[i]) for i in with_gt])) if with_gt else None
    check = FoldCheck(
        fold=fold, frames=len(images), median_dice_vs_fp32=float(np.median(vs_fp32)),
        min_dice_vs_fp32=float(vs_fp32[worst]), worst_frame=str(frame_ids[worst]),
        fp32_dice_gt=fp32_gt, int8_dice_gt=int8_gt, passed=True,
    )
    if check.median_dice_vs_fp32 < settings.min_median_dice:
        check.reasons.append(f"median Dice vs fp32 {check.median_dice_vs_fp32:.4f} < {settings.min_median_dice}")
    if check.dice_change is not None and abs(check.dice_change) > settings.max_dice_change:
        check.reasons.append(f"Dice vs ground truth changed by {check.dice_change:+.4f} "
                             f"(allowed +-{settings.max_dice_change})")
    check.passed = not check.reasons
    return check


# ---------------------------------------------------------------------------- the whole job
def quantize_model_folder(
    folder: str | Path | ModelFolder,
    calibration: str | Path,
    *,
    settings: QuantizeSettings | None = None,
    folds: Sequence[int] | None = None,
    onnx_cache_dir: str | Path | None = None,
    rejected_dir: str | Path | None = None,
) -> QuantizeReport:
    """Quantise every (or the given) fold of a model folder to int8 and write the variant.

    Args:
        folder: The model folder (path or loaded).
        calibration: A data-set folder (:class:`tavidata.format.Dataset`) with real-looking
            frames, ideally the one the model was trained on; its masks, when present, give
            the Dice against ground truth.
        settings: Frames, calibration method and accuracy targets (default :class:`QuantizeSettings`).
        folds: Folds to quantise (default: all). The variant lists only these.
        onnx_cache_dir: Where the fp32 export is cached (default: the engine's cache dir).
        rejected_dir: When the check fails, the candidate int8 files are written here
            (``fold_<k>.onnx-int8.rejected.onnx``, listed in the error's ``report.files``) for
            inspection and benchmarks; never into the model folder.

    Returns:
        A :class:`QuantizeReport` with ``written=True``.

    Raises:
        AccuracyCheckError: a fold failed the check (nothing written; ``.report`` has the figures).
        QuantizationError: unusable data set or a quantisation failure.
        ModelError: bad model folder or fold.
    """
    import onnxruntime  # noqa: F401  (fail early, naming the missing package)

    from segmentation.inference.backends import cached_onnx_path
    from segmentation.inference.config import default_onnx_cache_dir
    from tavidata.errors import DatasetError

    t0 = time.perf_counter()
    settings = settings or QuantizeSettings()
    settings = dataclasses.replace(settings, weight_type=settings.weight_type or default_weight_type())
    # absolute paths: the work below runs inside a temporary folder (see the chdir there)
    mf = folder if isinstance(folder, ModelFolder) else load_model_folder(Path(folder).resolve())
    if not Path(mf.path).is_absolute():
        mf = load_model_folder(Path(mf.path).resolve())
    chosen = tuple(mf.folds if folds is None else (int(f) for f in folds))
    for fold in chosen:
        mf.weights_path(fold)  # raises naming the folds present
    try:
        dataset = Dataset.load(Path(calibration).resolve())
    except DatasetError as exc:
        raise QuantizationError(f"calibration data: {exc}") from exc
    cache = (Path(onnx_cache_dir) if onnx_cache_dir is not None else default_onnx_cache_dir()).resolve()
    rejected_dir = None if rejected_dir is None else Path(rejected_dir).resolve()
    calibration_info: dict[str, Any] = {
        "dataset": {"name": dataset.meta.get("name", ""), "path": str(Path(dataset.root).resolve()),
                    "frames": len(dataset.records), "patients": len(dataset.patients)},
        "method": settings.calibrate_method,
        "folds": {},
    }
    report = QuantizeReport(folder=mf.path, variant=INT8_VARIANT, checks=[], calibration=calibration_info)
    outputs: dict[int, bytes] = {}
    # ONNX tooling called by the quantiser writes the external tensor data of large models
    # (MA-Net/EfficientNet-B4: 99 MB, uuid1-named *.data files) into the current folder; working
    # inside the temporary folder keeps them out of the user's folder and removes them at the end.
    with tempfile.TemporaryDirectory(prefix="taviseg-quantize-") as tmp, contextlib.chdir(tmp):
        for fold in chosen:
            cal, held_out, how = select_frames(dataset, fold, settings)
            cal_images, _ = _read(cal)
            check_images, check_masks = _read(held_out)
            fp32_path = cached_onnx_path(mf, fold, cache)
            work = Path(tmp) / f"fold_{fold}"
            work.mkdir()
            out = work / "int8.onnx"
            t_fold = time.perf_counter()
            done = quantize_onnx(fp32_path, out, model_batches(mf, cal_images, 1), settings, work)
            t_quant = time.perf_counter() - t_fold
            check = check_fold(mf, fold, out, check_images, check_masks, [r.frame_id for r in held_out], settings)
            logger.info("%s (quantised in %.0f s)", check.describe(), t_quant)
            report.checks.append(check)
            calibration_info["folds"][str(fold)] = {
                "selection": how,
                "calibration_frames": len(cal),
                "calibration_patients": sorted({r.patient_id for r in cal}),
                "calibration_frame_ids": [r.frame_id for r in cal],
                "check_frames": len(held_out),
                "check_patients": sorted({r.patient_id for r in held_out}),
                "check": check.to_json_dict(),
                "source_onnx": fp32_path.name,
                **done,
            }
            outputs[fold] = out.read_bytes()
    report.seconds = time.perf_counter() - t0
    if not report.passed:
        if rejected_dir is not None:
            Path(rejected_dir).mkdir(parents=True, exist_ok=True)
            for fold, data in outputs.items():
                path = Path(rejected_dir) / f"fold_{fold}.{INT8_VARIANT}.rejected.onnx"
                path.write_bytes(data)
                report.files[fold] = path
        failed = [c.describe() for c in report.checks if not c.passed]
        raise AccuracyCheckError(
            f"{mf.path}: int8 variant not written, the accuracy check failed: {' | '.join(failed)}", report
        )
    provenance = {
        "method": method_text(settings.weight_type),
        "weight_type": settings.weight_type,
        "calibration": calibration_info,
        "settings": dataclasses.asdict(settings),
        "versions": versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    variant = save_variant(mf, INT8_VARIANT, outputs, provenance=provenance)
    report.files = {fold: mf.path / name for fold, name in variant.files.items()}
    report.written = True
    return report
