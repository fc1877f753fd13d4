"""Patient-level k-fold training: train_one_epoch / evaluate / train_fold / train.

Per fold, ``out_dir/fold_<k>/`` holds::

    checkpoint_last.pt   model, optimizer, scaler, epoch, RNG states, history, best-so-far
    best.safetensors     weights of the epoch with the highest VALIDATION Dice (never test)
    history.csv          one row per epoch (HISTORY_COLUMNS)
    tb/                  TensorBoard scalars
    done.json            written when the fold is finished; a finished fold is skipped

:func:`train` then writes ``out_dir/model``, a model folder of the segmentation core
(``segmentation.models.folder``) holding the best weights of every finished fold.

Resuming: the checkpoint is written atomically at the end of every epoch; re-running the same
command after a crash or ``kill -9`` continues after the last finished epoch. Epoch ``e`` is
seeded from ``(seed, fold, e)`` alone (weights init from ``(seed, fold, 0)``), so on a CPU with
``deterministic: true`` a resumed run ends bitwise equal to an uninterrupted one. A new best
epoch's weights go to ``best.next.safetensors`` first and are renamed to ``best.safetensors``
only after the checkpoint naming that epoch is on disk.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tavicore.config import to_dict
from tavicore.device import resolve_device as core_resolve_device
from tavicore.errors import DeviceError
from tavicore.fileio import write_json_atomic, write_text_atomic
from tavidata.errors import SplitError
from tavidata.format import Dataset
from tavidata.splits import SPLITS_FILENAME, Splits, check_splits, load_splits
from training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
    save_weights,
)
from training.config import TrainConfig
from training.data import EvalFrameDataset, FrameDataset, derive_seed, fold_records, get_fold, make_loader
from training.errors import NonFiniteLossError, TrainingError
from training.loss import SoftDiceLoss, dice_per_frame, make_loss
from training.optim import build_optimizer, epoch_lr, set_lr

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "train_loss", "train_dice", "val_loss", "val_dice", "seconds", "images_per_s")
#: Config keys that do not change a fold's result (excluded from the resume fingerprint).
_VOLATILE_KEYS = ("epochs", "num_workers", "device", "max_batch_size", "memory_fraction", "cpu_threads")


@dataclass
class EpochResult:
    """Figures of one epoch: mean soft-Dice loss and mean per-frame hard Dice on each side."""

    epoch: int
    train_loss: float
    train_dice: float
    val_loss: float
    val_dice: float
    seconds: float
    images_per_s: float


@dataclass
class FoldResult:
    """Outcome of one fold: the best epoch by validation Dice and where its weights are."""

    fold: int
    best_epoch: int
    best_val_dice: float
    history: list[EpochResult] = field(default_factory=list)
    best_weights: Path = Path()


# --------------------------------------------------------------------------- devices, optim

def resolve_device(name: str) -> torch.device:
    """:func:`tavicore.device.resolve_device`, its error as a :class:`TrainingError`."""
    try:
        return core_resolve_device(name)
    except DeviceError as exc:
        raise TrainingError(str(exc)) from exc


def autocast_dtype_for(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: None on CPU or with ``amp: false``; bf16 if supported, else fp16."""
    if not cfg.amp or device.type != "cuda":
        return None
    if cfg.amp_dtype == "fp16":
        return torch.float16
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if cfg.amp_dtype == "bf16":
        logger.warning("bf16 is not supported on %s; using fp16 autocast with a GradScaler", device)
    return torch.float16


@contextlib.contextmanager
def _torch_settings(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms and the thread count on CPU, cuDNN autotuning on GPU (restored after)."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    previous_benchmark = torch.backends.cudnn.benchmark
    previous_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous_benchmark
        torch.set_num_threads(previous_threads)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- epoch loops

def _device_batches(loader: torch.utils.data.DataLoader, device: torch.device, *, channels_last: bool,
                    progress: bool, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``loader``'s (images, masks) batches moved to ``device`` (images channels-last if asked)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        yield x.to(device, non_blocking=True, memory_format=memory_format), y.to(device, non_blocking=True)


def _forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device,
             autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """``model(x)``, under autocast to ``autocast_dtype`` when one is given."""
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        return model(x)


class _EpochSums:
    """Loss (weighted by batch size) and per-frame Dice summed on the device over one pass."""

    def __init__(self, device: torch.device, threshold: float) -> None:
        self.loss = torch.zeros((), device=device)
        self.dice = torch.zeros((), device=device)
        self.frames = 0
        self.threshold = threshold

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch: its mean ``loss`` and the Dice of its ``logits`` against ``y``."""
        self.loss += loss * y.shape[0]
        self.dice += dice_per_frame(logits, y, self.threshold).sum()
        self.frames += y.shape[0]

    def means(self, empty: str) -> tuple[float, float, int]:
        """(mean loss, mean per-frame Dice, frames), one synchronisation with the device.

        Raises:
            TrainingError: ``empty``, when no batch was added.
        """
        if self.frames == 0:
            raise TrainingError(empty)
        return float(self.loss) / self.frames, float(self.dice) / self.frames, self.frames


def train_one_epoch(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    threshold: float = 0.5,
    progress: bool = False,
    desc: str = "train",
    loss_fn: torch.nn.Module | None = None,
) -> tuple[float, float, int]:
    """One pass over ``loader`` with ``loss_fn`` (default: the paper's soft-Dice loss).

    Losses and Dice stay on the device during the epoch (one synchronisation at the end).

    Returns:
        ``(mean loss, mean per-frame Dice, number of frames)``, loss weighted by batch size.

    Raises:
        TrainingError: an empty loader.
    """
    model.train()
    loss_fn = loss_fn if loss_fn is not None else SoftDiceLoss()
    sums = _EpochSums(device, threshold)
    for x, y in _device_batches(loader, device, channels_last=channels_last, progress=progress, desc=desc):
        optimizer.zero_grad(set_to_none=True)
        logits = _forward(model, x, device, autocast_dtype)
        loss = loss_fn(logits, y)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        sums.add(loss.detach(), logits.detach(), y)
    return sums.means("training loader yielded no batch (fewer frames than the batch size?)")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    threshold: float = 0.5,
    progress: bool = False,
    desc: str = "val",
) -> tuple[float, float]:
    """Mean soft-Dice loss (per batch, weighted by batch size) and mean per-frame hard Dice.

    Raises:
        TrainingError: an empty loader.
    """
    model.eval()
    loss_fn = SoftDiceLoss()
    sums = _EpochSums(device, threshold)
    for x, y in _device_batches(loader, device, channels_last=channels_last, progress=progress, desc=desc):
        logits = _forward(model, x, device, autocast_dtype)
        sums.add(loss_fn(logits, y), logits, y)
    loss, dice, _ = sums.means("validation loader yielded no batch")
    return loss, dice


# --------------------------------------------------------------------------- fold files

def config_fingerprint(cfg: TrainConfig) -> str:
    """SHA-256 of the configuration keys that change a fold's result."""
    data = to_dict(cfg)
    volatile = _VOLATILE_KEYS
    if cfg.optim.schedule == "constant":  # runs written before schedules existed keep their fingerprint
        for key in ("schedule", "final_lr_fraction"):
            data["optim"].pop(key, None)
    else:  # the curve depends on the epoch count: a longer run is another run
        volatile = tuple(k for k in volatile if k != "epochs")
    if cfg.loss == "dice":  # runs written before the loss was a setting keep their fingerprint
        data.pop("loss", None)
    for key in volatile:
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _fold_fingerprint(cfg: TrainConfig, fold: int, train_ids: Sequence[str], val_ids: Sequence[str]) -> str:
    payload = {"config": config_fingerprint(cfg), "fold": fold, "train": list(train_ids), "val": list(val_ids)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def write_history(path: Path, history: Sequence[EpochResult]) -> None:
    """Write ``history.csv`` (floats written with ``repr``: they read back exactly)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for row in history:
        writer.writerow([row.epoch] + [repr(float(getattr(row, c))) for c in HISTORY_COLUMNS[1:]])
    write_text_atomic(path, buffer.getvalue())


def read_history(path: Path) -> list[EpochResult]:
    """Read a ``history.csv`` written by :func:`write_history`.

    Raises:
        TrainingError: missing file or malformed row (names the path and line).
    """
    if not path.is_file():
        raise TrainingError(f"{path}: training history not found")
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                rows.append(EpochResult(int(row["epoch"]), *(float(row[c]) for c in HISTORY_COLUMNS[1:])))
            except (KeyError, TypeError, ValueError) as exc:
                raise TrainingError(f"{path}:{line}: malformed history row: {exc}") from exc
    return rows


def _read_done(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path}: malformed ({exc}); delete it to re-train the fold") from exc


def _settle_best_file(fold_dir: Path, best_epoch: int) -> None:
    """Finish or drop a best-weights update interrupted around the checkpoint write."""
    pending = fold_dir / "best.next.safetensors"
    if not pending.exists():
        return
    from safetensors import safe_open

    with safe_open(str(pending), framework="pt") as fh:
        epoch = int((fh.metadata() or {}).get("epoch", -1))
    if epoch == best_epoch:
        pending.replace(fold_dir / "best.safetensors")
    else:
        pending.unlink()


# --------------------------------------------------------------------------- one fold

def train_fold(
    cfg: TrainConfig,
    dataset: Dataset,
    splits: Splits,
    fold: int,
    out_dir: Path,
    *,
    epoch_callback: Callable[[EpochResult], None] | None = None,
    progress: bool = True,
) -> FoldResult:
    """Train one fold on its training patients, selecting the epoch by validation Dice.

    Resumes from ``out_dir/fold_<k>/checkpoint_last.pt`` when present; returns at once for a
    finished fold (``done.json`` of the same configuration and number of epochs).

    Args:
        cfg: Training configuration.
        dataset: The data set.
        splits: Its patient-level splits.
        fold: Fold index.
        out_dir: Run folder (``fold_<k>/`` is created in it).
        epoch_callback: Called with each epoch's result after the epoch's state is saved; an
            exception it raises (e.g. ``optuna.TrialPruned``) propagates.
        progress: Show tqdm bars for epochs and batches.

    Returns:
        The :class:`FoldResult`.

    Raises:
        SplitError: unknown fold or an empty side.
        DatasetError: unreadable frame, missing mask or a mask of the wrong size (names the path).
        NonFiniteLossError: a NaN/infinite training or validation loss (names fold and epoch).
        TrainingError: a checkpoint of another configuration or split in ``out_dir``, an
            unreadable checkpoint, or no CUDA for a CUDA device.
    """
    from torch.utils.tensorboard import SummaryWriter

    from segmentation.models.zoo import build_model, padded_input_size
    from training.augment import build_train_transform
    from training.batch_size import resolve_batch_size

    out_dir = Path(out_dir)
    fold_dir = out_dir / f"fold_{fold}"
    train_recs, val_recs = fold_records(
        dataset, splits, fold, seed=cfg.seed,
        max_train_frames=cfg.max_train_frames, max_val_frames=cfg.max_val_frames,
    )
    fingerprint = _fold_fingerprint(cfg, fold, [r.frame_id for r in train_recs], [r.frame_id for r in val_recs])
    done = _read_done(fold_dir / "done.json")
    if done is not None and done.get("fingerprint") != fingerprint:
        raise TrainingError(
            f"{fold_dir}: finished with another configuration, split or frame cap; use a new "
            "--out folder or delete this fold folder to re-train"
        )
    if done is not None and done.get("epochs") == cfg.epochs:
        logger.info("fold %d already finished (best epoch %d); skipped", fold, done["best_epoch"])
        return FoldResult(fold, int(done["best_epoch"]), float(done["best_val_dice"]),
                          read_history(fold_dir / "history.csv"), fold_dir / "best.safetensors")

    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype_for(cfg, device)
    channels_last = cfg.channels_last  # on the CPU too: 1.2-1.4x for LinkNet/ResNet-18 on 2 AVX2 cores
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    size = cfg.model.input_size
    pad_to = padded_input_size(cfg.model.architecture, size)

    ckpt_path = fold_dir / "checkpoint_last.pt"
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if fold_dir.is_dir():
        for stale in fold_dir.glob(".*.tmp"):  # half-written files of a killed run
            stale.unlink()
    if ckpt is not None and ckpt.get("fingerprint") != fingerprint:
        raise TrainingError(
            f"{ckpt_path}: written by another configuration, split or frame cap; use a new "
            "--out folder or delete this fold folder to re-train"
        )
    if ckpt is not None and int(ckpt["epoch"]) > cfg.epochs:
        raise TrainingError(
            f"{ckpt_path}: already {ckpt['epoch']} epochs, more than epochs={cfg.epochs}; "
            "use a new --out folder"
        )

    with _torch_settings(cfg, device):
        if ckpt is not None:
            batch_size = int(ckpt["batch_size"])
        else:
            batch_size = resolve_batch_size(cfg, device, pad_to, amp_dtype)
        batch_size = max(1, min(batch_size, len(train_recs)))

        _seed_everything(derive_seed(cfg.seed, fold, 0))
        model = build_model(cfg.model.architecture, cfg.model.encoder).to(device, memory_format=memory_format)
        optimizer = build_optimizer(model, cfg.optim)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        history: list[EpochResult] = []
        best_epoch, best_dice, start = 0, -math.inf, 0
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            history = [EpochResult(**h) for h in ckpt["history"]]
            best_epoch, best_dice, start = int(ckpt["best_epoch"]), float(ckpt["best_val_dice"]), int(ckpt["epoch"])
            restore_rng_state(ckpt["rng"])
            _settle_best_file(fold_dir, best_epoch)
            write_history(fold_dir / "history.csv", history)
            logger.info("fold %d: resuming after epoch %d (best epoch %d, val Dice %.4f)",
                        fold, start, best_epoch, best_dice)
        del ckpt
        if done is not None:  # more epochs than the finished run: continue it
            (fold_dir / "done.json").unlink()

        train_ds = FrameDataset(train_recs, build_train_transform(size, cfg.augment, pad_to),
                                seed=derive_seed(cfg.seed, fold))
        val_ds = EvalFrameDataset(val_recs, size, pad_to)
        val_loader = make_loader(val_ds, batch_size, shuffle=False, seed=0, num_workers=cfg.num_workers,
                                 pin_memory=device.type == "cuda")
        logger.info(
            "fold %d: %d training / %d validation frames, batch %d, %s%s, %s/%s at %d px (net %d px)",
            fold, len(train_ds), len(val_ds), batch_size, device,
            f" autocast {amp_dtype}" if amp_dtype else "", cfg.model.architecture, cfg.model.encoder, size, pad_to,
        )
        fold_dir.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(fold_dir / "tb"), purge_step=start + 1 if start else None)
        epochs = tqdm(range(start + 1, cfg.epochs + 1), initial=start, total=cfg.epochs,
                      desc=f"fold {fold}", unit="epoch", disable=not progress)
        try:
            for epoch in epochs:
                began = time.perf_counter()
                epoch_seed = derive_seed(cfg.seed, fold, epoch)
                _seed_everything(epoch_seed)
                train_ds.set_epoch(epoch)
                lr = epoch_lr(cfg.optim, epoch, cfg.epochs)
                set_lr(optimizer, lr)
                loader = make_loader(
                    train_ds, batch_size, shuffle=True, seed=epoch_seed, num_workers=cfg.num_workers,
                    pin_memory=device.type == "cuda", drop_last=len(train_ds) > batch_size,
                )
                train_loss, train_dice, frames = train_one_epoch(
                    model, loader, optimizer, device=device, scaler=scaler, autocast_dtype=amp_dtype,
                    channels_last=channels_last, threshold=cfg.threshold, progress=progress,
                    desc=f"epoch {epoch} train", loss_fn=make_loss(cfg.loss),
                )
                train_seconds = time.perf_counter() - began
                val_loss, val_dice = evaluate(
                    model, val_loader, device=device, autocast_dtype=amp_dtype, channels_last=channels_last,
                    threshold=cfg.threshold, progress=progress, desc=f"epoch {epoch} val",
                )
                for side, value in (("training", train_loss), ("validation", val_loss)):
                    if not math.isfinite(value):
                        raise NonFiniteLossError(
                            f"fold {fold} epoch {epoch}: {side} loss is {value}; lower optim.lr or disable amp"
                        )
                result = EpochResult(epoch, train_loss, train_dice, val_loss, val_dice,
                                     time.perf_counter() - began, frames / max(train_seconds, 1e-9))
                history.append(result)
                improved = val_dice > best_dice
                if improved:
                    best_epoch, best_dice = epoch, val_dice
                    save_weights(fold_dir / "best.next.safetensors", model.state_dict(),
                                 {"epoch": epoch, "fold": fold, "val_dice": val_dice})
                write_history(fold_dir / "history.csv", history)
                save_checkpoint(ckpt_path, {
                    "fingerprint": fingerprint, "epoch": epoch, "batch_size": batch_size,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": None, "scaler": scaler.state_dict(), "rng": capture_rng_state(),
                    "history": [dataclasses.asdict(h) for h in history],
                    "best_epoch": best_epoch, "best_val_dice": best_dice, "config": to_dict(cfg),
                })
                if improved:
                    (fold_dir / "best.next.safetensors").replace(fold_dir / "best.safetensors")
                for name, value in (("loss/train", train_loss), ("loss/val", val_loss),
                                    ("dice/train", train_dice), ("dice/val", val_dice),
                                    ("perf/images_per_s", result.images_per_s), ("optim/lr", lr)):
                    writer.add_scalar(name, value, epoch)
                writer.flush()
                epochs.set_postfix(val_dice=f"{val_dice:.4f}", best=f"{best_dice:.4f}@{best_epoch}")
                logger.info(
                    "fold %d epoch %d/%d: train loss %.4f dice %.4f | val loss %.4f dice %.4f | %.1f img/s, lr %.2g",
                    fold, epoch, cfg.epochs, train_loss, train_dice, val_loss, val_dice, result.images_per_s, lr,
                )
                if epoch_callback is not None:
                    epoch_callback(result)
        finally:
            epochs.close()
            writer.close()

    write_json_atomic(fold_dir / "done.json", {
        "fold": fold, "best_epoch": best_epoch, "best_val_dice": best_dice, "epochs": cfg.epochs,
        "fingerprint": fingerprint, "config_fingerprint": config_fingerprint(cfg), "batch_size": batch_size,
        "train_frames": len(train_recs), "val_frames": len(val_recs),
    })
    logger.info("fold %d finished: best epoch %d, val Dice %.4f", fold, best_epoch, best_dice)
    return FoldResult(fold, best_epoch, best_dice, history, fold_dir / "best.safetensors")


# --------------------------------------------------------------------------- all folds

def load_dataset_splits(dataset: Dataset) -> tuple[Splits, str]:
    """The data set's saved splits (``<root>/splits.json``), checked, and the file's SHA-256.

    Raises:
        SplitError: no splits file (tells how to make one), or leakage/unknown patients.
    """
    path = Path(dataset.root) / SPLITS_FILENAME
    if not path.is_file():
        raise SplitError(
            f"{path}: no patient-level splits for this data set; run "
            f"`taviseg dataset split --data {dataset.root}` first"
        )
    splits = load_splits(path)
    check_splits(splits, dataset)
    return splits, hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("taviseg", "torch", "segmentation-models-pytorch", "timm", "albumentations"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def write_model_folder(cfg: TrainConfig, dataset: Dataset, splits: Splits, splits_sha256: str, out_dir: Path) -> Path:
    """Write ``out_dir/model`` from every finished fold of this configuration in ``out_dir``.

    Returns:
        The model folder path.

    Raises:
        TrainingError: no finished fold, or a finished fold of another configuration.
    """
    from segmentation.models.folder import ModelSpec, save_model_folder

    out_dir = Path(out_dir)
    wanted = config_fingerprint(cfg)
    states: dict[int, dict[str, torch.Tensor]] = {}
    fold_info: dict[str, Any] = {}
    for item in splits.folds:
        fold_dir = out_dir / f"fold_{item.index}"
        done = _read_done(fold_dir / "done.json")
        if done is None:
            continue
        if done.get("config_fingerprint") != wanted:
            raise TrainingError(f"{fold_dir}: trained with another configuration; use a new --out folder")
        states[item.index] = load_weights(fold_dir / "best.safetensors")
        fold_info[str(item.index)] = {k: done[k] for k in ("best_epoch", "best_val_dice", "epochs", "batch_size",
                                                           "train_frames", "val_frames")}
    if not states:
        raise TrainingError(f"{out_dir}: no finished fold to put into a model folder")
    provenance = {
        "dataset": {"name": dataset.meta.get("name", ""), "path": str(Path(dataset.root).resolve()),
                    "frames": len(dataset.records), "patients": len(dataset.patients)},
        "splits": {"file": SPLITS_FILENAME, "sha256": splits_sha256, "k": splits.k, "seed": splits.seed},
        "config": to_dict(cfg),
        "folds": fold_info,
        "selection": "best epoch per fold by validation Dice (validation patients only)",
        "versions": _versions(),
    }
    spec = ModelSpec(architecture=cfg.model.architecture, encoder=cfg.model.encoder,
                     input_size=cfg.model.input_size, in_channels=1, normalization="unit",
                     threshold=cfg.threshold, provenance=provenance, folds=tuple(sorted(states)))
    return save_model_folder(out_dir / "model", spec, states, overwrite=True)


def train(
    cfg: TrainConfig,
    dataset_root: Path,
    out_dir: Path,
    *,
    folds: Sequence[int] | None = None,
    progress: bool = True,
) -> Path:
    """Cross-validated training from the data set's saved splits; writes the model folder.

    Args:
        cfg: Training configuration.
        dataset_root: Data-set folder (with ``splits.json``).
        out_dir: Run folder (``fold_<k>/`` per fold, ``model/`` at the end).
        folds: Folds to train (default: all). Finished folds are skipped; the model folder holds
            every finished fold in ``out_dir``.
        progress: Show tqdm bars.

    Returns:
        ``out_dir / "model"``.

    Raises:
        DatasetError, SplitError, TrainingError: see :func:`train_fold`.
    """
    dataset = Dataset.load(dataset_root)
    splits, splits_sha = load_dataset_splits(dataset)
    chosen = [f.index for f in splits.folds] if folds is None else [int(f) for f in folds]
    for fold in chosen:
        get_fold(splits, fold)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "train_config.json", to_dict(cfg))
    for fold in chosen:
        train_fold(cfg, dataset, splits, fold, out_dir, progress=progress)
    model = write_model_folder(cfg, dataset, splits, splits_sha, out_dir)
    from segmentation.qc.fit import fit_after_training  # per-frame QC data (docs/qc.md); fail-soft

    fit_after_training(model, dataset_root, out_dir / "qc-stress", device=cfg.device)
    return model
