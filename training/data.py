"""Frames of a data set as torch tensors: the fold's train/validation sets and their loaders.

Reproducibility: the augmentation of sample ``i`` in epoch ``e`` is drawn from a generator
seeded with ``(seed, e, i)`` only, and each epoch's shuffling from ``(seed, fold, e)``. So an
epoch's batches do not depend on the number of workers, on earlier epochs, or on whether the
run was resumed from a checkpoint.

Frames are normalised with :func:`segmentation.inference.preprocess.normalize_frames`, the
function inference uses, so that training and inference see the same input range.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from tavidata.errors import DatasetError, SplitError
from tavidata.format import Dataset, FrameRecord
from tavidata.splits import Fold, Splits

if TYPE_CHECKING:
    import albumentations as A

logger = logging.getLogger(__name__)


def derive_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (NumPy ``SeedSequence``; stable across platforms)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0])


class FrameDataset(torch.utils.data.Dataset):
    """(image, mask) pairs of data-set frames, resized/augmented/padded and normalised.

    Items are ``(image, mask)``: float32 tensors (1, S, S) with the image in [0, 1] and the
    mask in {0, 1}, where S is the transform's output size.
    """

    def __init__(self, records: Sequence[FrameRecord], transform: A.Compose | None, *, seed: int = 0) -> None:
        """Takes the frame records, an Albumentations ``Compose`` and the augmentation seed."""
        self.records = list(records)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw uint8 frame and its uint8 0/1 mask.

        Raises:
            DatasetError: unreadable files, a frame that is not 8-bit 2-D, a missing mask, or a
                mask whose size differs from the frame's (the message names both paths).
        """
        record = self.records[index]
        image = Dataset.read_image(record)
        mask = Dataset.read_mask(record)
        if image.ndim != 2 or image.dtype != np.uint8:
            raise DatasetError(
                f"{record.image}: training needs 8-bit single-channel frames, got {image.dtype} "
                f"with shape {image.shape}"
            )
        if mask.shape != image.shape:
            raise DatasetError(
                f"{record.mask}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its frame "
                f"{record.image} ({image.shape[1]}x{image.shape[0]})"
            )
        return image, mask.astype(np.uint8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from segmentation.inference.preprocess import normalize_frames

        image, mask = self.load_pair(index)
        self.transform.set_random_seed(derive_seed(self.seed, self.epoch, index))
        out = self.transform(image=image, mask=mask)
        frame = np.ascontiguousarray(normalize_frames(out["image"]), dtype=np.float32)
        target = np.ascontiguousarray(out["mask"] > 0, dtype=np.float32)
        return torch.from_numpy(frame[None]), torch.from_numpy(target[None])


class EvalFrameDataset(FrameDataset):
    """Validation frames mapped exactly as inference maps them (no augmentation).

    The image goes through :func:`segmentation.inference.preprocess.to_model_input` (normalise,
    resize: area when shrinking, linear when enlarging; centred zero padding to the network
    size); the mask is resized with nearest neighbour and padded the same way.
    """

    def __init__(self, records: Sequence[FrameRecord], input_size: int, padded_size: int) -> None:
        """Takes the frame records, the resize size and the (padded) network size."""
        super().__init__(records, transform=None)
        if padded_size < input_size:
            raise ValueError(f"padded_size {padded_size} is smaller than input_size {input_size}")
        self.input_size = int(input_size)
        self.padded_size = int(padded_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from segmentation.inference.preprocess import to_model_input

        image, mask = self.load_pair(index)
        batch, geometry = to_model_input(image, input_size=self.input_size, padded_size=self.padded_size)
        size, off = self.input_size, geometry.pad_before
        target = np.zeros((1, self.padded_size, self.padded_size), np.float32)
        target[0, off:off + size, off:off + size] = cv2.resize(
            mask, (size, size), interpolation=cv2.INTER_NEAREST
        ) > 0
        return torch.from_numpy(np.ascontiguousarray(batch[0])), torch.from_numpy(target)


def _seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from the worker's torch seed; one
    OpenCV thread per worker (the workers already run in parallel)."""
    cv2.setNumThreads(1)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(
    dataset: FrameDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose order depends on ``seed`` only (build one per epoch).

    Args:
        dataset: The frames.
        batch_size: Frames per batch.
        shuffle: Shuffle (training) or keep the manifest order (validation).
        seed: Seed of the shuffling generator and of the workers' seeds.
        num_workers: Worker processes (0: load in the main process).
        pin_memory: Page-locked batches for asynchronous copies to the GPU.
        drop_last: Drop a last incomplete batch (avoids batch-norm on a single frame).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        worker_init_fn=_seed_worker if num_workers else None,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )


def get_fold(splits: Splits, fold: int) -> Fold:
    """The fold with index ``fold``.

    Raises:
        SplitError: no such fold (the message lists the valid indices).
    """
    return splits.fold(fold)


def _cap(records: list[FrameRecord], limit: int | None, seed: int) -> list[FrameRecord]:
    """At most ``limit`` records, a seeded sample kept in manifest order."""
    if limit is None or len(records) <= limit:
        return records
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(len(records), size=limit, replace=False).tolist())
    return [records[i] for i in keep]


def fold_records(
    dataset: Dataset,
    splits: Splits,
    fold: int,
    *,
    seed: int = 0,
    max_train_frames: int | None = None,
    max_val_frames: int | None = None,
) -> tuple[list[FrameRecord], list[FrameRecord]]:
    """The training and validation frames of a fold (never its test patients).

    Args:
        dataset: The loaded data set.
        splits: Its patient-level splits.
        fold: Fold index.
        seed: Seed of the optional caps' sampling.
        max_train_frames, max_val_frames: Optional caps (seeded subsets) for quick runs.

    Returns:
        ``(train_records, val_records)`` in manifest order.

    Raises:
        SplitError: unknown fold, or a side without frames.
        DatasetError: a frame of the fold without a mask.
    """
    item = get_fold(splits, fold)
    train = _cap(dataset.frames_of(item.train), max_train_frames, derive_seed(seed, fold, 1))
    val = _cap(dataset.frames_of(item.val), max_val_frames, derive_seed(seed, fold, 2))
    if not train or not val:
        raise SplitError(
            f"fold {fold}: {len(train)} training and {len(val)} validation frames in "
            f"{dataset.root}; both sides need frames (re-run `taviseg dataset split`)"
        )
    for record in (*train, *val):
        if record.mask is None:
            raise DatasetError(f"{record.image}: frame {record.frame_id} has no mask; training needs one per frame")
    return train, val
