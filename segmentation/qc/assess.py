"""Per-frame quality of a model's outlines: run the model once more carefully, measure, calibrate.

:class:`QualityAssessor` wraps an :class:`~segmentation.inference.engine.InferenceEngine` and
its folder's :class:`~segmentation.qc.store.QualityModel`. For a run (a sequence of frames) it

1. preprocesses the frames and runs every fold's backend on the frames and their horizontal
   flips in one batch (the engine's own probabilities are the plain ones, or the mean of both
   with ``tta``; the masks are exactly the engine's); the flips are left out when neither TTA
   nor the folder's calibrator needs them (a model that is not flip-consistent);
2. measures each frame: flip-TTA Dice and boundary entropy (:mod:`.disagreement`), shape
   (:mod:`.shape`), contrast of the outlined region (:mod:`.contrast`), agreement with the
   neighbouring frames (:mod:`.temporal`), the old confidence, and the encoder features'
   Mahalanobis distance to the training frames (:mod:`.ood`);
3. turns the features into P(frame Dice >= 0.8) with the calibrator, flags frames below the
   folder's ``flag_below`` or beyond the fitted feature range (``ood_flag``), and applies the
   "no root here" gate: a frame far out of distribution, with an implausible predicted area or
   an outlined region no darker than its surroundings gets an empty mask and the reason.

Without QC data in the folder, masks and the old confidence are still produced; quality is
None ("not available") and nothing is gated or flagged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from segmentation.inference.confidence import frame_confidence
from segmentation.inference.postprocess import postprocess_mask, threshold_mask
from segmentation.inference.preprocess import (
    FrameInput,
    as_frame_list,
    crop_padding,
    restore_probabilities,
    to_model_input,
)
from segmentation.qc.contrast import mask_contrast
from segmentation.qc.disagreement import boundary_entropy, flip_dice
from segmentation.qc.ood import EncoderFeatures
from segmentation.qc.shape import shape_features
from segmentation.qc.store import NOT_AVAILABLE, QualityModel, load_quality_model
from segmentation.qc.temporal import temporal_dice
from segmentation.qc.verdict import RunVerdict, run_verdict

logger = logging.getLogger(__name__)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))).astype(np.float32)


@dataclass
class Measurement:
    """What :meth:`QualityAssessor.measure` found for a run, before calibration.

    ``masks``: the engine's masks (original size); ``features``: one dict per frame (the
    calibrator's inputs except the OOD distance and shape implausibility, plus every shape
    feature); ``encoder``: ``(N, D)`` pooled encoder features; ``probabilities``: the maps
    when requested.
    """

    masks: list[np.ndarray]
    confidence: np.ndarray
    features: list[dict[str, float]]
    encoder: np.ndarray
    probabilities: list[np.ndarray] | None = None


@dataclass
class QCPrediction:
    """Masks plus their quality for a run.

    ``masks``: final masks (gated frames empty); ``raw_masks``: the model's masks before the
    gate; ``confidence``: the old confidence; ``quality``: P(Dice >= 0.8) per frame, None
    without QC data; ``flagged``: quality below ``flag_below`` or gated; ``reasons``: the
    "no root here" reason of gated frames (None elsewhere); ``verdict``: the run's verdict.
    """

    masks: list[np.ndarray]
    raw_masks: list[np.ndarray]
    confidence: np.ndarray
    quality: np.ndarray | None
    flagged: np.ndarray
    reasons: list[str | None]
    features: list[dict[str, float]]
    verdict: RunVerdict
    probabilities: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.masks)

    def quality_text(self, i: int) -> str:
        """Frame ``i``'s quality for CSV/JSON: ``0.873`` or ``not available``."""
        return NOT_AVAILABLE if self.quality is None else f"{self.quality[i]:.4f}"


@dataclass
class QualityAssessor:
    """Runs an engine's model with the measurements of the quality estimate (module docstring)."""

    engine: object  # segmentation.inference.engine.InferenceEngine (not imported: cycle-free)
    qc: QualityModel | None
    _encoder: EncoderFeatures | None = field(default=None, repr=False)

    @classmethod
    def from_engine(cls, engine) -> QualityAssessor:
        """The assessor of ``engine`` with its folder's QC data (None, logged once, when absent).

        QC data fitted for other weights (``provenance.weights_sha256``, e.g. a model retrained
        into the same folder) are not used: logged as an error, quality "not available".

        Raises:
            ModelError: the folder's QC data are invalid.
        """
        qc = load_quality_model(engine.folder.path)
        fitted = (qc.provenance.get("weights_sha256") or {}) if qc is not None else {}
        stale = [k for k in engine.folds if str(k) in fitted and fitted[str(k)] != engine.folder.weights_hash(k)]
        if stale:
            logger.error("%s: QC data were fitted for other weights of fold(s) %s; quality %s until "
                         "`taviseg qc fit` is run again", engine.folder.path, stale, NOT_AVAILABLE)
            qc = None
        return cls(engine=engine, qc=qc)

    @property
    def available(self) -> bool:
        """Whether the folder has QC data (a quality estimate)."""
        return self.qc is not None

    def _features_net(self) -> EncoderFeatures:
        if self._encoder is None:
            self._encoder = EncoderFeatures(self.engine.folder, device=self.engine.device)
        return self._encoder

    @property
    def needs_flip(self) -> bool:
        """Whether the flipped forward pass is needed: TTA, fitting (no QC data yet), or a
        calibrator that uses the flip feature."""
        return bool(self.engine.tta) or self.qc is None or "flip_dice" in self.qc.calibrator.features

    def _model_maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Fold-averaged probabilities of the batch and of its flip (flipped back; None when
        :attr:`needs_flip` is false), ``(N, P, P)``."""
        n = batch.shape[0]
        flip = self.needs_flip
        inputs = np.concatenate([batch, batch[..., ::-1]], axis=0) if flip else batch
        plain = np.zeros((n,) + batch.shape[2:], np.float32)
        flipped = np.zeros_like(plain) if flip else None
        for backend in self.engine.backends.values():
            p = _sigmoid(backend.logits(inputs))
            plain += p[:n]
            if flipped is not None:
                flipped += p[n:, :, ::-1]
        k = np.float32(len(self.engine.backends))
        return plain / k, (flipped / k if flipped is not None else None)

    def _model_input(self, chunk: list[np.ndarray], bits_stored: int | None):
        """``chunk`` as the network's input batch and its geometry (the engine's preprocessing)."""
        spec = self.engine.spec
        return to_model_input(chunk, input_size=spec.input_size, padded_size=spec.padded_size,
                              in_channels=spec.in_channels, normalization=spec.normalization,
                              bits_stored=bits_stored)

    def encoder_features(self, frames: FrameInput, *, bits_stored: int | None = None) -> np.ndarray:
        """``(N, D)`` pooled encoder features of ``frames`` alone (no segmentation): what the
        out-of-distribution statistics are fitted on."""
        items = as_frame_list(frames)
        size = self.engine.batch_size
        out = [self._features_net()(self._model_input(items[start:start + size], bits_stored)[0])
               for start in range(0, len(items), size)]
        return np.concatenate(out) if out else np.zeros((0, 0))

    def measure(
        self,
        frames: FrameInput,
        *,
        bits_stored: int | None = None,
        spacing_mm: Sequence[float] | None = None,
        sequence: bool = True,
        return_probabilities: bool = False,
    ) -> Measurement:
        """Run the model on ``frames`` and measure every frame (calibration-free features).

        Args:
            frames: The frames (one run when ``sequence``; sizes may differ otherwise).
            bits_stored: Bits Stored of integer frames, if known.
            spacing_mm: Pixel spacing (row, column); None: the training field of view is assumed
                for the mm features.
            sequence: Frames are consecutive frames of one run (temporal consistency measured).
            return_probabilities: Keep the probability maps.
        """
        engine = self.engine
        spec = engine.spec
        items = as_frame_list(frames)
        masks: list[np.ndarray] = []
        conf: list[float] = []
        feats: list[dict[str, float]] = []
        enc: list[np.ndarray] = []
        probs_out: list[np.ndarray] = []
        threshold = engine.postprocess.threshold if engine.postprocess.threshold is not None else spec.threshold
        spacing_of = (lambda shape: spacing_mm) if self.qc is None else (
            lambda shape: self.qc.shape.spacing_for(shape, spacing_mm))
        for start in range(0, len(items), engine.batch_size):
            chunk = items[start:start + engine.batch_size]
            batch, geometry = self._model_input(chunk, bits_stored)
            plain, flipped = self._model_maps(batch)
            used = 0.5 * (plain + flipped) if engine.tta else plain
            enc.append(self._features_net()(batch))
            small_used = crop_padding(used, geometry)
            small_plain = crop_padding(plain, geometry) if flipped is not None else None
            small_flip = crop_padding(flipped, geometry) if flipped is not None else None
            for j, p in enumerate(restore_probabilities(used, geometry)):
                image = chunk[j]
                mask = postprocess_mask(p, engine.postprocess, default_threshold=spec.threshold)
                conf.append(frame_confidence(p, mask, margin_fraction=engine.confidence_config.margin_fraction))
                m_small = postprocess_mask(small_used[j], engine.postprocess, default_threshold=spec.threshold)
                flip_agreement = math.nan
                if small_flip is not None:
                    m_plain = postprocess_mask(small_plain[j], engine.postprocess, default_threshold=spec.threshold)
                    m_flip = postprocess_mask(small_flip[j], engine.postprocess, default_threshold=spec.threshold)
                    flip_agreement = flip_dice(m_plain, m_flip)
                f = shape_features(mask, spacing_of(mask.shape), raw_mask=threshold_mask(small_used[j], threshold))
                f.update({
                    "flip_dice": flip_agreement,
                    "boundary_entropy": boundary_entropy(small_used[j], m_small),
                    "mask_contrast": mask_contrast(image, mask),
                    "confidence": conf[-1],
                })
                masks.append(mask)
                feats.append(f)
                if return_probabilities:
                    probs_out.append(p)
        td = temporal_dice(masks) if sequence else np.full(len(masks), np.nan)
        for f, t in zip(feats, td):
            f["temporal_dice"] = float(t)
        return Measurement(
            masks=masks, confidence=np.asarray(conf, np.float32), features=feats,
            encoder=np.concatenate(enc) if enc else np.zeros((0, 0)),
            probabilities=probs_out if return_probabilities else None,
        )

    def score(self, m: Measurement) -> QCPrediction:
        """Calibrate a measurement: quality, flags, the "no root here" gate and the verdict."""
        n = len(m.masks)
        if self.qc is None:
            return QCPrediction(
                masks=list(m.masks), raw_masks=list(m.masks), confidence=m.confidence, quality=None,
                flagged=np.zeros(n, bool), reasons=[None] * n, features=m.features,
                verdict=run_verdict(None, np.zeros(n, bool), [None] * n),
                probabilities=m.probabilities,
            )
        qc = self.qc
        distances = qc.ood.distance(m.encoder) if n else np.zeros(0)
        for f, d in zip(m.features, distances):
            f["ood_distance"] = float(d)
            f["ood_log_distance"] = float(math.log1p(d))
            f["shape_implausibility"] = qc.shape.implausibility(f)
        quality = qc.calibrator.predict_dicts(m.features) if n else np.zeros(0)
        reasons = [qc.gate.reason(f["ood_distance"], f["area_frac"], f["mask_contrast"], f["shape_implausibility"])
                   for f in m.features]
        masks = [np.zeros_like(mask) if r is not None else mask for mask, r in zip(m.masks, reasons)]
        flagged = ((quality < qc.flag_below) | (distances > qc.ood_flag)
                   | np.array([r is not None for r in reasons], bool))
        return QCPrediction(
            masks=masks, raw_masks=list(m.masks), confidence=m.confidence, quality=quality,
            flagged=flagged, reasons=reasons, features=m.features,
            verdict=run_verdict(quality, flagged, reasons), probabilities=m.probabilities,
        )

    # measure's keywords spelled out again, not **kwargs: callers get them checked and typed.
    def predict(
        self,
        frames: FrameInput,
        *,
        bits_stored: int | None = None,
        spacing_mm: Sequence[float] | None = None,
        sequence: bool = True,
        return_probabilities: bool = False,
    ) -> QCPrediction:
        """:meth:`measure` then :meth:`score` (arguments as for :meth:`measure`)."""
        return self.score(self.measure(frames, bits_stored=bits_stored, spacing_mm=spacing_mm, sequence=sequence,
                                       return_probabilities=return_probabilities))
