"""The report's figures (PNG, matplotlib's non-interactive Agg backend).

* :func:`plot_training_curves`: loss and Dice per epoch (train dashed, validation solid), mean
  across folds with a 95 % band (2.5th-97.5th percentile of the folds, see :func:`mean_band`),
  one colour per model.
* :func:`plot_dice_boxplots`: per-patient and per-frame Dice per model.
* :func:`plot_dice_assd_scatter`: per-patient Dice against ASSD (mm), one colour per model.
* :func:`plot_overlays`: the best and worst frames of each model with the ground-truth (green)
  and predicted (red) outlines drawn on the frame.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # the backend must be chosen before pyplot is imported
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

logger = logging.getLogger(__name__)

DPI = 110


def _colors(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    logger.debug("wrote %s", path)
    return path


def mean_band(curves: Sequence[Sequence[float]], coverage: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean across folds and the central ``coverage`` band of the folds, epoch by epoch.

    The band runs from the ``(1 - coverage) / 2`` to the ``(1 + coverage) / 2`` percentile
    of the fold values (linear interpolation; with 5 folds close to their min-max range), so
    it stays within the values observed. Folds of different lengths are aligned at epoch 1;
    each epoch uses the folds that reached it.

    Returns:
        ``(mean, low, high)`` arrays, one value per epoch.
    """
    length = max((len(c) for c in curves), default=0)
    data = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        data[i, : len(c)] = np.asarray(c, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(data, axis=0)
        low = np.nanpercentile(data, 50 * (1 - coverage), axis=0)
        high = np.nanpercentile(data, 50 * (1 + coverage), axis=0)
    return mean, low, high


def plot_training_curves(histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], path: str | Path) -> Path:
    """Loss and Dice per epoch per model, mean across folds with a 95 % band.

    Args:
        histories: ``{model: [fold history, ...]}``; a fold history is a list of rows with
            ``epoch``, ``train_loss``, ``val_loss``, ``train_dice``, ``val_dice``.
        path: PNG to write.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for color, (name, folds) in zip(_colors(len(histories)), histories.items()):
        for ax, metric in zip(axes, ("loss", "dice")):
            for split, style in (("train", "--"), ("val", "-")):
                curves = [[float(r[f"{split}_{metric}"]) for r in fold] for fold in folds if fold]
                if not curves:
                    continue
                mean, low, high = mean_band(curves)
                epochs = np.arange(1, len(mean) + 1)
                ax.plot(epochs, mean, style, color=color, label=f"{name} {split}")
                ax.fill_between(epochs, low, high, color=color, alpha=0.15, linewidth=0)
    for ax, label in zip(axes, ("soft-Dice loss", "Dice")):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Training curves: mean across folds, band = 2.5-97.5th percentile of folds "
                 "(train dashed, validation solid)", fontsize=10)
    return _save(fig, Path(path))


def plot_dice_boxplots(per_patient: Mapping[str, Sequence[float]], per_frame: Mapping[str, Sequence[float]],
                       path: str | Path) -> Path:
    """Box plots of per-patient and per-frame Dice, one box per model."""
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(per_patient) + 3), 4.2))
    for ax, data, title in ((axes[0], per_patient, "per patient"), (axes[1], per_frame, "per frame")):
        names = list(data)
        values = [np.asarray([v for v in data[n] if np.isfinite(v)]) for n in names]
        ax.boxplot(values, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
        for i, v in enumerate(values, start=1):
            jitter = np.random.default_rng(i).uniform(-0.12, 0.12, size=v.size)
            ax.plot(i + jitter, v, ".", alpha=0.4, color="gray")
        ax.set_title(f"Dice {title}")
        ax.set_ylabel("Dice")
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


def plot_dice_assd_scatter(per_patient: Mapping[str, Sequence[tuple[float, float]]], path: str | Path) -> Path:
    """Per-patient Dice (x) against ASSD in mm (y), one colour per model."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for color, (name, points) in zip(_colors(len(per_patient)), per_patient.items()):
        pts = np.asarray([p for p in points if np.all(np.isfinite(p))], dtype=np.float64).reshape(-1, 2)
        ax.scatter(pts[:, 0], pts[:, 1], color=color, label=name, alpha=0.75, s=22)
    ax.set_xlabel("Dice (per patient)")
    ax.set_ylabel("ASSD (mm, per patient)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Per-patient Dice vs ASSD")
    return _save(fig, Path(path))


def plot_overlays(examples: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Best and worst frames per model with ground-truth (green) and predicted (red) outlines.

    Args:
        examples: ``{model: [{"title": str, "image": 2-D uint8, "truth": bool 2-D,
            "prediction": bool 2-D}, ...]}`` (one row of panels per model).
        path: PNG to write.
    """
    rows = max(1, len(examples))
    cols = max([len(v) for v in examples.values()] + [1])
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (name, panels) in enumerate(examples.items()):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel["image"], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            for mask, color in ((panel["truth"], "lime"), (panel["prediction"], "red")):
                if np.any(mask) and not np.all(mask):
                    ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=1.0)
            ax.set_title(f"{name}\n{panel['title']}", fontsize=7)
    fig.suptitle("Best and worst frames: ground truth (green), prediction (red)", fontsize=9)
    return _save(fig, Path(path))
