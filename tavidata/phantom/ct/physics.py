"""X-ray physics and the angiography system's image chain for the v2 (CT) phantom.

Attenuation (:func:`attenuation`): HU to linear attenuation at an effective energy, with a
soft-tissue / bone split (bone's photo-electric excess grows at low energies) and organ-wise
scaling. Iodine (:func:`iodine_mu_per_mm`): attenuation of iodinated blood per mm at the
effective energy. The chain (:class:`ImageChain`): Beer-Lambert transmission, heel effect and
wedge filter, scatter as a low-pass fraction of the primary, focal-spot and detector blur,
quantum and electronic noise, the log, the system's processing (large-scale dynamic range
compression, mid- and fine-scale edge enhancement) and the display tone curve to 8-bit
MONOCHROME2 (iodine, bone and metal dark, lungs bright).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.special import ndtri

logger = logging.getLogger(__name__)

#: 256 Gaussian quantiles: a uniform random byte through this table is a N(0, 1) sample.
_GAUSS = ndtri((np.arange(256) + 0.5) / 256.0).astype(np.float32).reshape(1, 256)
#: Percentiles of the preview that the tone curve maps onto the run's grey targets.
TONE_QUANTILES = (1.0, 5.0, 50.0, 95.0, 99.0)
#: Entries of the tone look-up table.
TONE_LUT_SIZE = 4096
#: Large-scale filters run on a grid this many times coarser.
COARSE = 8


#: NIST XCOM mass attenuation (cm^2/g, with coherent scattering) of water and iodine.
_KEV = np.array([30.0, 40.0, 50.0, 60.0, 80.0, 100.0])
_WATER = np.array([0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707])
_IODINE = np.array([8.51, 22.1, 12.32, 7.583, 3.51, 1.942])  # above the K edge (33.2 keV) from 40 keV


def effective_energy_kev(kvp: float) -> float:
    """Mean energy of a filtered tungsten spectrum: about 41 keV at 70 kVp, 54 keV at 100 kVp."""
    return 0.42 * kvp + 12.0


def _loglog(kev: float, table: np.ndarray) -> float:
    return float(np.exp(np.interp(np.log(kev), np.log(_KEV[1:]), np.log(table[1:]))))


def water_mu_per_mm(kev: float) -> float:
    """Linear attenuation of water (1/mm) at ``kev`` (log-log interpolation of NIST XCOM)."""
    return _loglog(kev, _WATER) / 10.0


def iodine_mu_per_mm(kev: float, mg_per_ml: float) -> float:
    """Extra attenuation (1/mm) of blood holding ``mg_per_ml`` iodine at ``kev`` (40-100 keV)."""
    return _loglog(kev, _IODINE) * mg_per_ml * 1e-3 / 10.0


def attenuation(hu: np.ndarray, labels: np.ndarray, *, kev: float, bone_excess: float,
                label_scale: np.ndarray | None = None) -> np.ndarray:
    """Linear attenuation (1/mm, float32) of a CT block.

    Args:
        hu: Hounsfield units.
        labels: Label of every voxel (same shape), for ``label_scale``.
        kev: Effective energy.
        bone_excess: Extra attenuation of dense bone relative to water-equivalent scaling
            (0.3-0.8 at 70-100 kVp; grows at low energies).
        label_scale: Optional (256,) factor per label id (organ-wise attenuation scaling).
    """
    mu_w = np.float32(water_mu_per_mm(kev))
    mu = np.maximum(hu, -1000.0) * np.float32(mu_w / 1000.0) + mu_w
    bone = np.clip((hu - 150.0) / 850.0, 0.0, 1.0)
    mu *= 1.0 + np.float32(bone_excess) * bone
    if label_scale is not None:
        mu *= label_scale.astype(np.float32)[labels]
    np.maximum(mu, 0.0, out=mu)
    return mu.astype(np.float32, copy=False)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; wide ones (sigma >= 6 px) on a grid up to :data:`COARSE` times coarser."""
    if sigma < 0.3:
        return img
    if sigma < 6.0:
        return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    factor = int(min(COARSE, sigma // 3.0))
    h, w = img.shape
    small = cv2.resize(img, (max(2, w // factor), max(2, h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Standard normal float32 noise from random bytes (fast, seeded)."""
    raw = np.frombuffer(rng.bytes(shape[0] * shape[1]), np.uint8).reshape(shape)
    return cv2.LUT(raw, _GAUSS)


@dataclass(frozen=True)
class ChainSettings:
    """Settings of the image chain of one run (lengths in output pixels)."""

    photons: float            # photons per pixel behind an open field (quantum noise)
    electronic: float         # electronic noise std, as a fraction of the open-field signal
    noise_corr_px: float      # detector correlation of the noise
    scatter_fraction: float   # scatter / primary behind the body
    scatter_sigma_px: float
    focal_blur_px: float
    detector_blur_px: float
    heel: float               # intensity ramp across the field (heel effect), fraction
    heel_angle: float
    drc: float                # large-scale dynamic range compression gain (0-1)
    drc_sigma_px: float
    enhance_mid: float        # mid-scale enhancement gain, band-pass (0.15 to 1 x enhance_mid_px)
    enhance_mid_px: float
    enhance_fine: float       # fine-scale edge enhancement gain
    enhance_fine_px: float
    display_noise: float      # noise of the processed image, in grey levels
    display_noise_px: float   # its correlation length
    grey_targets: tuple       # display: grey levels of the 1st, 5th, 50th, 95th, 99th percentiles
    jpeg_quality: int


class ImageChain:
    """Turns line integrals (attenuation x mm) into 8-bit frames, with a tone curve fitted once."""

    def __init__(self, settings: ChainSettings, shape: tuple[int, int], open_field: np.ndarray,
                 wedge: np.ndarray | None = None):
        self.s = settings
        self.shape = shape
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (np.cos(settings.heel_angle) * (xx / w - 0.5) + np.sin(settings.heel_angle) * (yy / h - 0.5))
        flat = (1.0 + settings.heel * ramp).astype(np.float32)
        if wedge is not None:
            flat *= wedge.astype(np.float32)
        self.flat = flat
        self.open_field = open_field
        self.lut = np.arange(256, dtype=np.float32)
        self.lut_lo = 0.0
        self.lut_scale = 255.0
        self.reference = 1.0

    def set_reference(self, line_integral: np.ndarray) -> None:
        """The median detector signal of a preview (the dose control's operating point)."""
        primary = np.exp(-line_integral[::4, ::4].astype(np.float32)) * self.flat[::4, ::4]
        inside = primary[self.open_field[::4, ::4]] if self.open_field.any() else primary.ravel()
        self.reference = float(np.median(inside)) * (1.0 + self.s.scatter_fraction)

    def processed(self, line_integral: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Brightness image (float32 log signal, higher = more transmission) before the tone curve.

        The system's processing (dynamic range compression, edge enhancement) acts on the
        detector signal after its recursive/spatial noise filter, so it sharpens anatomy and
        devices without amplifying the quantum noise much: it is applied to the noiseless log
        signal, and the quantum and electronic noise (in the log domain: relative noise
        ``1 / sqrt(photons)``, spatially correlated by the detector) are added after it.
        """
        s = self.s
        primary = np.exp(-line_integral.astype(np.float32)) * self.flat
        primary = _blur(primary, s.focal_blur_px)
        scatter = _blur(primary, s.scatter_sigma_px) * np.float32(s.scatter_fraction)
        signal = _blur(primary + scatter, s.detector_blur_px)
        signal = np.maximum(signal, np.float32(1e-6))
        a = np.log(signal)
        if s.drc > 0:
            a = a - np.float32(s.drc) * (_blur(a, s.drc_sigma_px) - np.float32(np.median(a[::8, ::8])))
        if s.enhance_mid > 0:
            # band-pass (difference of Gaussians): lifts texture and edges between about 0.15 and
            # 1 x enhance_mid_px without sharpening the finest edges (device borders), which real
            # frames do not show (their 99th gradient percentile stays near 90 grey levels/px)
            mid = _blur(a, 0.15 * s.enhance_mid_px) - _blur(a, s.enhance_mid_px)
            a = a + np.float32(s.enhance_mid) * mid
        if s.enhance_fine > 0:
            a = a + np.float32(s.enhance_fine) * (a - _blur(a, s.enhance_fine_px))
        if rng is not None:
            n = gaussian_noise(rng, self.shape)
            if s.noise_corr_px >= 0.3:
                n = cv2.GaussianBlur(n, (0, 0), s.noise_corr_px, borderType=cv2.BORDER_REFLECT)
                n *= np.float32(1.0 / _unit_blur_std(s.noise_corr_px))
            # photons counted relative to the median signal behind the body (the dose control
            # keeps that level at ``photons`` per pixel whatever the patient's thickness)
            rel = np.float32(self.reference) / signal
            sigma = np.sqrt(rel / np.float32(s.photons) + (np.float32(s.electronic) * rel) ** 2)
            a = a + n * sigma
        return a.astype(np.float32)

    def fit_tone(self, preview: np.ndarray) -> None:
        """Fit the display curve to a noiseless preview: its 1st, 5th, 50th, 95th and 99th
        percentiles (inside the open field) land on the run's grey targets, through a smooth
        monotone curve (PCHIP) with soft roll-offs beyond the 1st and 99th percentiles."""
        from scipy.interpolate import PchipInterpolator

        s = self.s
        inside = preview[self.open_field] if self.open_field.any() else preview.ravel()
        q = np.percentile(inside, TONE_QUANTILES).astype(np.float64)
        q = np.maximum.accumulate(q + np.arange(len(q)) * 1e-6)
        g = np.maximum.accumulate(np.asarray(s.grey_targets, np.float64) + np.arange(len(q)) * 1e-3)
        span = float(q[-1] - q[0]) or 1.0
        lo, hi = q[0] - 0.6 * span, q[-1] + 0.6 * span
        x = np.linspace(lo, hi, TONE_LUT_SIZE)
        curve = PchipInterpolator(q, g, extrapolate=False)(x)
        below, above = x < q[0], x > q[-1]
        slope_lo = (g[1] - g[0]) / (q[1] - q[0])
        slope_hi = (g[-1] - g[-2]) / (q[-1] - q[-2])
        # beyond the end knots: the end slope, rolled off (no hard clipping of the tails)
        d_lo = (q[0] - x[below]) * slope_lo
        curve[below] = g[0] - g[0] * (1.0 - np.exp(-d_lo / max(g[0], 1.0)))
        d_hi = (x[above] - q[-1]) * slope_hi
        curve[above] = g[-1] + (255.0 - g[-1]) * (1.0 - np.exp(-d_hi / max(255.0 - g[-1], 1.0)))
        self.lut = np.clip(curve, 0, 255).astype(np.float32)
        self.lut_lo = float(lo)
        self.lut_scale = float((TONE_LUT_SIZE - 1) / (hi - lo))

    def to_uint8(self, a: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Tone curve: brightness -> 8-bit, plus the display-domain noise of the system's
        processing (``rng`` None: none), then for some runs a JPEG round trip."""
        s = self.s
        idx = np.clip((a - np.float32(self.lut_lo)) * np.float32(self.lut_scale), 0, TONE_LUT_SIZE - 1)
        grey = np.take(self.lut, idx.astype(np.int32))
        if rng is not None and s.display_noise > 0:
            n = gaussian_noise(rng, self.shape)
            if s.display_noise_px >= 0.3:
                n = cv2.GaussianBlur(n, (0, 0), s.display_noise_px, borderType=cv2.BORDER_REFLECT)
                n *= np.float32(1.0 / _unit_blur_std(s.display_noise_px))
            grey = grey + n * np.float32(s.display_noise)
        out = np.clip(np.round(grey), 0, 255).astype(np.uint8)
        if s.jpeg_quality:
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(s.jpeg_quality)])
            if ok:
                out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        return out


def _unit_blur_std(sigma: float) -> float:
    k = cv2.getGaussianKernel(int(2 * np.ceil(4 * sigma) + 1), sigma).ravel()
    return float(np.sqrt(np.sum(np.outer(k, k) ** 2)))


__all__ = ["COARSE", "ChainSettings", "ImageChain", "attenuation", "effective_energy_kev", "gaussian_noise",
           "iodine_mu_per_mm", "water_mu_per_mm"]
