"""Processing one received run into output objects: decode -> model -> SEG (+ SR, GSPS, SC).

The worker only knows the :class:`RunProcessor` protocol. :class:`ModelPipeline` is the real
processor (the inference engine and the DICOM writers of :mod:`segmentation`);
``processing.processor_factory`` can name another one (integrations, tests).

Output UIDs are derived deterministically from the source SOP Instance UID, the model's
fingerprint and the output kind, so a re-sent run yields the same SEG SOP Instance UID and the
PACS replaces the object instead of storing a duplicate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from dicom_node.config import ProcessingConfig
from dicom_node.errors import NodeConfigError, NotSegmentable, ProcessingError
from dicom_node.spool import StoredInstance

logger = logging.getLogger(__name__)

#: Offset of each output kind's series number from ``processing.series_number``.
SERIES_OFFSETS = {"seg": 0, "sr": 1, "gsps": 2, "sc": 3}
ALGORITHM_NAME = "taviseg aortic root"


#: Per-frame QC outcomes counted in the node's metrics (``qc_frames_total{outcome}``): accepted
#: (no flag), marked (flagged, outline kept: policy mark), withheld (flagged, outline removed:
#: policy withhold) and no_root (empty on purpose: no contrast or no root in view).
QC_OUTCOMES = ("accepted", "marked", "withheld", "no_root")


@dataclass(frozen=True)
class OutputObject:
    """One object produced for a run: its kind (seg, sr, gsps, sc) and the data set.

    ``qc_frames`` (on the SEG, when QC ran): the run's frames counted by QC outcome
    (:data:`QC_OUTCOMES`) and its verdict under the key ``"run:<status>"``.
    """

    kind: str
    dataset: pydicom.Dataset
    qc_frames: dict[str, int] | None = None


def qc_frame_counts(flagged: Sequence[bool], reasons: Sequence[str | None], policy: str, status: str,
                    *, run_withheld: bool = False) -> dict[str, int]:
    """Count a run's frames by QC outcome under ``policy`` (and its verdict as ``run:<status>``).

    ``run_withheld``: the whole run's outlines were withheld (policy withhold, run failed QC).
    """
    counts = dict.fromkeys(QC_OUTCOMES, 0)
    for flag, reason in zip(flagged, reasons, strict=True):
        if reason is not None:
            counts["no_root"] += 1
        elif run_withheld or (flag and policy == "withhold"):
            counts["withheld"] += 1
        else:
            counts["marked" if flag else "accepted"] += 1
    counts[f"run:{status}"] = 1
    return counts


@runtime_checkable
class RunProcessor(Protocol):
    """Turns a spooled instance into output objects.

    ``process`` raises :class:`NotSegmentable` for objects that are kept but not segmented and
    :class:`ProcessingError` when processing fails; it must not keep state between runs.
    """

    name: str
    version: str

    def process(self, instance: StoredInstance) -> list[OutputObject]:
        """Return the output objects of ``instance`` (at least the SEG)."""
        ...


def derive_uid(source_uid: str, model_version: str, purpose: str, root: str | None = None) -> str:
    """A UID that depends only on its inputs (same run + model + purpose -> same UID).

    Args:
        source_uid: The source SOP (or Series) Instance UID.
        model_version: Fingerprint of the model producing the object.
        purpose: What the UID names (``"seg"``, ``"seg-series"``...).
        root: UID root ending with '.' (None: pydicom's root).
    """
    return str(generate_uid(prefix=root or pydicom.uid.PYDICOM_ROOT_UID,
                            entropy_srcs=[source_uid, model_version, purpose]))


def assign_output_uids(
    ds: pydicom.Dataset,
    *,
    source: pydicom.Dataset,
    kind: str,
    model_version: str,
    uid_root: str | None,
) -> None:
    """Give an output data set its deterministic SOP Instance and Series Instance UIDs.

    The series UID is derived from the source series, so all outputs of one kind for the runs
    of one series form one derived series.
    """
    sop_uid = derive_uid(str(source.SOPInstanceUID), model_version, kind, uid_root)
    series_uid = derive_uid(str(source.SeriesInstanceUID), model_version, f"{kind}-series", uid_root)
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = sop_uid


def model_fingerprint(folder: Path) -> str:
    """Short SHA-256 over a model folder's config.json and weight files (the model version).

    Raises:
        NodeConfigError: the folder or its config.json is missing.
    """
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise NodeConfigError(f"processing.model_folder {folder}: no config.json (not a model folder)")
    h = hashlib.sha256()
    for path in [config, *sorted(folder.glob("*.safetensors"))]:
        h.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


class ModelPipeline:
    """The real processor: InferenceEngine + the DICOM writers of :mod:`segmentation.dicom`.

    The engine is built from ``processing.inference`` (an
    :class:`~segmentation.inference.config.InferenceConfig`, the schema of
    ``conf/inference.yaml``) by :meth:`InferenceEngine.from_config`, so device, backend, batch
    size, folds, TTA, post-processing, confidence and host threads all apply in the node as in
    ``taviseg predict``.

    Args:
        cfg: Processing settings (model folder, output kinds, the inference section...).
        onnx_cache_dir: Where the engine caches ONNX exports when ``processing.inference``
            names no folder (None: the user cache folder).

    Raises:
        NodeConfigError: no model folder configured, or it cannot be loaded.
    """

    name = ALGORITHM_NAME

    def __init__(self, cfg: ProcessingConfig, *, onnx_cache_dir: Path | None = None) -> None:
        if cfg.model_folder is None:
            raise NodeConfigError(
                "processing.model_folder is not set: point it at a model folder (config.json + "
                "fold_<k>.safetensors). To get one: `taviseg demo` trains one into runs/demo/train/model, "
                "`taviseg train` into <out>/model, `taviseg model import` converts released checkpoints; "
                "then set processing.model_folder in the file or pass --set processing.model_folder=PATH"
            )
        from segmentation.errors import SegmentationError
        from segmentation.inference.engine import InferenceEngine

        self.cfg = cfg
        self.version = model_fingerprint(cfg.model_folder)
        # highdicom warns about odd person names with the name in the message: keep patient
        # names out of the logs (process-wide filter; the node owns its process).
        warnings.filterwarnings(
            "ignore", message=r".*unlikely to represent the intended person name", category=UserWarning
        )
        inference = cfg.inference
        if inference.onnx_cache_dir is None and onnx_cache_dir is not None:
            inference = dataclasses.replace(inference, onnx_cache_dir=Path(onnx_cache_dir))
        try:
            self.engine = InferenceEngine.from_config(cfg.model_folder, inference)
        except SegmentationError as exc:
            raise NodeConfigError(f"processing.model_folder {cfg.model_folder}: {exc}") from exc
        logger.info("model %s loaded (version %s)", cfg.model_folder, self.version)
        # per-frame quality control (processing.qc; docs/qc.md): None when off
        self.assessor = None
        if cfg.qc != "off":
            from segmentation.qc.assess import QualityAssessor

            try:
                self.assessor = QualityAssessor.from_engine(self.engine)
            except SegmentationError as exc:
                raise NodeConfigError(f"processing.model_folder {cfg.model_folder}: {exc}") from exc

    def process(self, instance: StoredInstance) -> list[OutputObject]:
        """Segment every frame of the run and build the configured output objects.

        Raises:
            NotSegmentable: not an image the model segments (dose SR, colour image...).
            ProcessingError: decoding, inference or writing failed.
        """
        from segmentation.dicom.reader import open_run
        from segmentation.dicom.sop_classes import InputKind, classify
        from segmentation.errors import DicomDecodeError, SegmentationError, UnsupportedObjectError

        try:
            run = open_run(instance.path)
            kind = classify(run.dataset)
            if kind != InputKind.IMAGE:
                raise NotSegmentable(f"instance {instance.sop_instance_uid} is {kind.value}, not segmented")
            if self.assessor is not None and self.assessor.available:
                numbers, masks, confidence, qc = self._predict_qc(run)
                return self._outputs(run, numbers, masks, confidence, qc=qc)
            numbers, masks, confidence = self._predict(run)
            return self._outputs(run, numbers, masks, confidence)
        except UnsupportedObjectError as exc:
            raise NotSegmentable(str(exc)) from exc
        except DicomDecodeError as exc:
            raise ProcessingError(f"cannot decode instance {instance.sop_instance_uid}: {exc}") from exc
        except SegmentationError as exc:
            raise ProcessingError(f"instance {instance.sop_instance_uid}: {exc}") from exc

    def _predict(self, run: Any) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Frame numbers (1-based), masks (N, H, W) and confidences (N,) of the decoded frames.

        Frames are decoded and segmented ``chunk_frames`` at a time. A frame that cannot be
        decoded (corrupt, or missing from a run that declares more frames than it holds) is
        logged by the reader and left out: the outputs reference only frames that were really
        segmented, and a run declaring thousands of frames it lacks costs only what it holds.

        Raises:
            ProcessingError: no frame of the run could be decoded.
        """
        masks: list[np.ndarray] = []
        confidence: list[np.ndarray] = []

        def segment(batch: np.ndarray) -> None:
            pred = self.engine.predict(batch, bits_stored=run.bits_stored)
            masks.append(pred.masks.astype(bool, copy=False))
            confidence.append(np.asarray(pred.confidence, np.float32))

        numbers = self._in_chunks(run, segment)
        return numbers, np.concatenate(masks), np.concatenate(confidence)

    def _in_chunks(self, run: Any, segment: Any) -> list[int]:
        """Decode ``run`` and call ``segment(batch)`` on ``chunk_frames`` frames at a time; returns
        the 1-based numbers of the frames decoded (a frame that cannot be decoded is left out).

        Raises:
            ProcessingError: no frame of the run could be decoded.
        """
        numbers: list[int] = []
        chunk: list[np.ndarray] = []
        for index, frame in run.iter_frames():
            chunk.append(frame)
            numbers.append(index + 1)
            if len(chunk) >= self.cfg.chunk_frames:
                segment(np.stack(chunk))
                chunk.clear()
        if chunk:
            segment(np.stack(chunk))
        n = run.number_of_frames
        if not numbers:
            raise ProcessingError(
                f"instance {run.sop_instance_uid}: no frame could be decoded "
                f"({len(run.failures)} failure(s), e.g. {next(iter(run.failures.values()), 'unknown')})"
            )
        if len(numbers) < n:
            logger.warning("instance %s: %d of %d frame(s) could not be decoded; the outputs cover the other %d",
                           run.sop_instance_uid, n - len(numbers), n, len(numbers))
        return numbers

    def _predict_qc(self, run: Any) -> tuple[list[int], np.ndarray, np.ndarray, RunQuality]:
        """As :meth:`_predict`, with the per-frame quality (the assessor's masks: "no root here"
        frames are empty); frames are assessed ``chunk_frames`` at a time as one sequence.

        Raises:
            ProcessingError: no frame of the run could be decoded.
        """
        from segmentation.qc.verdict import run_verdict

        masks: list[np.ndarray] = []
        confidence: list[np.ndarray] = []
        quality: list[np.ndarray] = []
        flagged: list[np.ndarray] = []
        reasons: list[str | None] = []
        spacing = run.calibration.spacing_mm

        def segment(batch: np.ndarray) -> None:
            pred = self.assessor.predict(batch, bits_stored=run.bits_stored, spacing_mm=spacing)
            masks.append(np.stack(pred.masks).astype(bool, copy=False))
            confidence.append(np.asarray(pred.confidence, np.float32))
            quality.append(np.asarray(pred.quality, np.float64))
            flagged.append(np.asarray(pred.flagged, bool))
            reasons.extend(pred.reasons)

        numbers = self._in_chunks(run, segment)
        q, f = np.concatenate(quality), np.concatenate(flagged)
        verdict = run_verdict(q, f, reasons)
        logger.info("instance %s: QC %s (%s; %d flagged, %d without root, policy %s)", run.sop_instance_uid,
                    verdict.status, verdict.text, verdict.flagged, verdict.no_root, self.cfg.qc)
        return numbers, np.concatenate(masks), np.concatenate(confidence), RunQuality(q, f, reasons, verdict)

    def _outputs(self, run: Any, numbers: list[int], masks: np.ndarray,
                 confidence: np.ndarray, qc: RunQuality | None = None) -> list[OutputObject]:
        from segmentation.dicom.seg import build_segmentation

        source = run.dataset
        seg_description, notes, qc_frames = "AI aortic root segmentation", None, None
        if self.cfg.qc != "off" and qc is None:
            seg_description, qc_frames = "AI outline, quality not available", {"run:unknown": 1}
        if qc is not None:  # processing.qc mark or withhold (docs/qc.md)
            if self.cfg.qc == "withhold" and qc.verdict.status == "fail":
                raise NotSegmentable(
                    f"instance {run.sop_instance_uid}: outline withheld by QC ({qc.verdict.text})",
                    qc_frames=qc_frame_counts(qc.flagged, qc.reasons, self.cfg.qc, qc.verdict.status,
                                              run_withheld=True),
                )
            qc_frames = qc_frame_counts(qc.flagged, qc.reasons, self.cfg.qc, qc.verdict.status)
            seg_description = qc.verdict.text
            notes = ["no-root" if r is not None else ("withheld" if self.cfg.qc == "withhold" else "uncertain")
                     if f else None for f, r in zip(qc.flagged, qc.reasons)]
            confidence = qc.quality  # the SR's certainty is the calibrated quality
            if self.cfg.qc == "withhold":
                masks = np.where(qc.flagged[:, None, None], False, masks)

        def uids(kind: str) -> dict[str, str]:
            return {
                "sop_instance_uid": derive_uid(str(source.SOPInstanceUID), self.version, kind, self.cfg.uid_root),
                "series_instance_uid": derive_uid(
                    str(source.SeriesInstanceUID), self.version, f"{kind}-series", self.cfg.uid_root
                ),
            }

        seg = build_segmentation(
            source,
            masks,
            frame_numbers=numbers,
            algorithm_name=ALGORITHM_NAME,
            algorithm_version=self.version,
            series_number=self.cfg.series_number + SERIES_OFFSETS["seg"],
            series_description=seg_description,
            content_description=seg_description,
            **uids("seg"),
        )
        outputs = [OutputObject("seg", seg, qc_frames=qc_frames)]
        if "sr" in self.cfg.outputs:
            from segmentation.dicom.sr import build_measurement_report, measure_frames

            sr = build_measurement_report(
                source,
                seg,
                measure_frames(masks, numbers, confidence, notes),
                calibration=run.calibration,
                algorithm_name=ALGORITHM_NAME,
                algorithm_version=self.version,
                series_number=self.cfg.series_number + SERIES_OFFSETS["sr"],
                series_description="AI aortic root measurements",
                model_variant=self.engine.backend_name,
                **uids("sr"),
            )
            outputs.append(OutputObject("sr", sr))
        if "gsps" in self.cfg.outputs:
            from segmentation.dicom.overlay import build_presentation_state

            gsps = build_presentation_state(
                source,
                masks,
                frame_numbers=numbers,
                algorithm_name=ALGORITHM_NAME,
                algorithm_version=self.version,
                series_number=self.cfg.series_number + SERIES_OFFSETS["gsps"],
                series_description="AI aortic root outline",
                **uids("gsps"),
            )
            outputs.append(OutputObject("gsps", gsps))
        if "sc" in self.cfg.outputs:
            from segmentation.dicom.overlay import build_burned_in_capture

            sc = build_burned_in_capture(
                source,
                _frames_again(run, numbers),
                masks,
                frame_numbers=numbers,
                algorithm_name=ALGORITHM_NAME,
                algorithm_version=self.version,
                series_number=self.cfg.series_number + SERIES_OFFSETS["sc"],
                series_description="AI aortic root outline (burned in)",
                bits_stored=run.bits_stored,
                **uids("sc"),
            )
            outputs.append(OutputObject("sc", sc))
        return outputs


@dataclass(frozen=True)
class RunQuality:
    """Per-frame quality of a run (arrays over its segmented frames) and the run's verdict."""

    quality: np.ndarray
    flagged: np.ndarray
    reasons: list[str | None]
    verdict: Any  # segmentation.qc.verdict.RunVerdict


def _frames_again(run: Any, numbers: Sequence[int]) -> Iterator[np.ndarray]:
    """The frames ``numbers`` (1-based) of the run, decoded once more (zeros where one fails now)."""
    from segmentation.errors import DicomDecodeError

    for number in numbers:
        try:
            yield run.read_frame(number - 1)
        except DicomDecodeError:
            yield np.zeros((run.rows, run.columns), dtype=run.dtype)


def load_processor(cfg: ProcessingConfig, *, onnx_cache_dir: Path | None = None) -> RunProcessor:
    """The configured processor: ``processing.processor_factory(cfg)`` or :class:`ModelPipeline`.

    Raises:
        NodeConfigError: the factory cannot be imported or does not return a RunProcessor; the
            model folder cannot be loaded.
    """
    if cfg.processor_factory is None:
        return ModelPipeline(cfg, onnx_cache_dir=onnx_cache_dir)
    module_name, func_name = cfg.processor_factory.split(":")
    try:
        factory: Callable[[ProcessingConfig], RunProcessor] = getattr(
            importlib.import_module(module_name), func_name
        )
    except (ImportError, AttributeError) as exc:
        raise NodeConfigError(f"processing.processor_factory {cfg.processor_factory!r}: {exc}") from exc
    processor = factory(cfg)
    if not isinstance(processor, RunProcessor):
        raise NodeConfigError(
            f"processing.processor_factory {cfg.processor_factory!r} returned "
            f"{type(processor).__name__}, not a RunProcessor (name, version, process())"
        )
    return processor
