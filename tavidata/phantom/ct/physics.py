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
    if sigma < 0.3:
        return img
    if sigma < 12.0:
        return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    h, w = img.shape
    small = cv2.resize(img, (max(2, w // COARSE), max(2, h // COARSE)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / COARSE, borderType=cv2.BORDER_REFLECT)
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
    enhance_mid: float        # mid-scale edge enhancement gain
    enhance_mid_px: float
    enhance_fine: float       # fine-scale edge enhancement gain
    enhance_fine_px: float
    grey_p1: float            # display: where the 1st/99th percentiles and the median land
    grey_p99: float
    grey_median: float
    jpeg_quality: int


class ImageChain:
    """Turns line integrals (attenuation x mm) into 8-bit frames, with a tone curve fitted once."""

    def __init__(self, settings: ChainSettings, shape: tuple[int, int], rng: np.random.Generator,
                 open_field: np.ndarray, wedge: np.ndarray | None = None):
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
        self.lut_lo = 0.0
        self.lut_scale = 1.0
        self.gamma = 1.0
        self.reference = 1.0

    def set_reference(self, line_integral: np.ndarray) -> None:
        """The median detector signal of a preview (the dose control's operating point)."""
        primary = np.exp(-line_integral[::4, ::4].astype(np.float32)) * self.flat[::4, ::4]
        inside = primary[self.open_field[::4, ::4]] if self.open_field.any() else primary.ravel()
        self.reference = float(np.median(inside)) * (1.0 + self.s.scatter_fraction)

    def processed(self, line_integral: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Brightness image (float32, higher = more transmission) before the tone curve."""
        s = self.s
        primary = np.exp(-line_integral.astype(np.float32)) * self.flat
        primary = _blur(primary, s.focal_blur_px)
        scatter = _blur(primary, s.scatter_sigma_px) * np.float32(s.scatter_fraction)
        signal = primary + scatter
        if rng is not None:
            n = gaussian_noise(rng, self.shape)
            if s.noise_corr_px >= 0.3:
                n = cv2.GaussianBlur(n, (0, 0), s.noise_corr_px, borderType=cv2.BORDER_REFLECT)
                n *= np.float32(1.0 / _unit_blur_std(s.noise_corr_px))
            # photons counted relative to the median signal behind the body (the dose control
            # keeps that level at ``photons`` per pixel whatever the patient's thickness)
            ref = np.float32(self.reference)
            sigma = np.sqrt(np.maximum(signal, 1e-9) * ref / np.float32(s.photons) + (np.float32(s.electronic) * ref) ** 2)
            signal = signal + n * sigma
        signal = _blur(signal, s.detector_blur_px)
        a = np.log(np.maximum(signal, np.float32(1e-5)))
        if s.drc > 0:
            a = a - np.float32(s.drc) * (_blur(a, s.drc_sigma_px) - np.float32(np.median(a[::8, ::8])))
        if s.enhance_mid > 0:
            a = a + np.float32(s.enhance_mid) * (a - _blur(a, s.enhance_mid_px))
        if s.enhance_fine > 0:
            a = a + np.float32(s.enhance_fine) * (a - _blur(a, s.enhance_fine_px))
        return a.astype(np.float32)

    def fit_tone(self, preview: np.ndarray) -> None:
        """Fit the display window to a noiseless preview: its 1st/99th percentiles and median
        (inside the open field) land on the run's grey targets."""
        s = self.s
        inside = preview[self.open_field] if self.open_field.any() else preview.ravel()
        p1, p50, p99 = np.percentile(inside, [1, 50, 99])
        span = max(float(p99 - p1), 1e-6)
        x_med = float(np.clip((p50 - p1) / span, 0.05, 0.95))
        y_med = (s.grey_median - s.grey_p1) / max(s.grey_p99 - s.grey_p1, 1.0)
        self.gamma = float(np.clip(np.log(np.clip(y_med, 0.05, 0.95)) / np.log(x_med), 0.4, 2.5))
        self.lut_lo = float(p1)
        self.lut_scale = 1.0 / span

    def to_uint8(self, a: np.ndarray) -> np.ndarray:
        """Tone curve: brightness -> 8-bit, with a soft toe and shoulder beyond the window."""
        s = self.s
        x = (a - np.float32(self.lut_lo)) * np.float32(self.lut_scale)
        # soft roll-off outside [0, 1] (no hard clipping of the grey tails)
        x = np.clip(x, -1.0, 2.0)
        x = np.where(x < 0, -np.log1p(-np.minimum(x, 0) * 4.0) / 4.0, x)
        x = np.where(x > 1, 1.0 + np.log1p(np.maximum(x - 1.0, 0) * 4.0) / 4.0, x)
        y = np.sign(x) * np.abs(x) ** np.float32(self.gamma)
        g = s.grey_p1 + (s.grey_p99 - s.grey_p1) * y
        out = np.clip(np.round(g), 0, 255).astype(np.uint8)
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
