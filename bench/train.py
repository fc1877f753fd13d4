"""Training throughput: our training loop against a plain loop, same model, data and augmentation.

Ours (:mod:`training.train`): a DataLoader (worker prefetch, pinned memory and
``non_blocking`` copies on GPU; in-process on CPU), channels-last (``--channels-last``, on GPU
and CPU), bf16/fp16 autocast on GPU,
``zero_grad(set_to_none=True)``, losses and Dice accumulated on the device (one sync per epoch).
Plain (the authors' style): each batch assembled from a Python list of samples in the main
process (no prefetch), fp32, contiguous layout, ``zero_grad()`` to zeros, and ``.item()``
host syncs for loss and Dice after every step. Both loops read the same PNG frames from disk
and run the same augmentation pipeline, from the same initial weights; the passes are
interleaved and the best of ``--repeats`` kept (robust to other load on a shared machine).

Prints ONE summary line on stdout::

    train bench linknet/resnet18 256px batch 4 on cpu: ours 3.38 img/s, plain 2.40 img/s, ratio 1.40x ...

    .venv/bin/python bench/train.py [--arch linknet --encoder resnet18 --size 256 --batch 4
                                     --frames 24 --repeats 2 --workers auto --device auto
                                     --channels-last yes|no]

Default: about 1 min on 2 idle CPU cores (2-3 min on a busy machine).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from segmentation.models.zoo import build_model, padded_input_size
from tavidata.format import Dataset, DatasetWriter
from training.augment import build_train_transform
from training.config import AugmentConfig, ModelConfig, OptimConfig, TrainConfig
from training.data import FrameDataset, make_loader
from training.loss import SoftDiceLoss, dice_per_frame
from training.optim import build_optimizer
from training.train import autocast_dtype_for, resolve_device, train_one_epoch

logger = logging.getLogger("bench.train")


def synthetic_dataset(root: Path, n: int, size: int = 1000, seed: int = 0) -> Dataset:
    """``n`` smooth random 8-bit frames with a dark disc and its mask, written as a data set."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    with DatasetWriter(root, name="bench-train") as writer:
        for i in range(n):
            low = cv2.resize(rng.normal(0, 1, (size // 16, size // 16)).astype(np.float32), (size, size))
            image = 130 + 36 * low / (low.std() + 1e-6) + rng.normal(0, 8, (size, size))
            cy, cx, r = rng.integers(size // 4, size // 2), rng.integers(size // 3, 2 * size // 3), size // 7
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            image[mask] -= 25
            writer.add(f"B{i // 8:03d}", "run01", i % 8, np.clip(image, 0, 255).astype(np.uint8), mask)
    return Dataset.load(root)


def plain_epoch(model: torch.nn.Module, dataset: FrameDataset, optimizer: torch.optim.Optimizer,
                batch: int, device: torch.device, seed: int) -> int:
    """The authors' style: list-built batches in the main process, fp32, per-step host syncs."""
    model.train()
    loss_fn = SoftDiceLoss()
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    losses, dices, frames = [], [], 0
    for start in range(0, len(order) - batch + 1, batch):
        samples = [dataset[i] for i in order[start:start + batch]]
        x = torch.stack([s[0] for s in samples]).to(device)
        y = torch.stack([s[1] for s in samples]).to(device)
        optimizer.zero_grad(set_to_none=False)
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        dices.append(dice_per_frame(logits.detach(), y).mean().item())
        frames += x.shape[0]
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="linknet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=256, help="input size (frames are 1000x1000)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24, help="frames per epoch")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per loop (best kept)")
    parser.add_argument("--workers", default="auto",
                        help="DataLoader workers of our loop (auto: 0 on CPU, where a worker competes with "
                             "the compute threads for 2 cores; 8 on GPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--channels-last", choices=("yes", "no"), default="yes",
                        help="our loop's memory format (the training default, conf channels_last: true, "
                             "on GPU and CPU); the plain loop stays contiguous")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    device = resolve_device(args.device)
    if args.workers == "auto":
        workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    else:
        workers = int(args.workers)
    pad_to = padded_input_size(args.arch, args.size)
    optim = OptimConfig(name="adam", lr=args.lr)

    amp_dtype = autocast_dtype_for(TrainConfig(model=ModelConfig(args.arch, args.encoder, args.size)), device)
    channels_last = args.channels_last == "yes"
    torch.manual_seed(0)
    init = build_model(args.arch, args.encoder).state_dict()

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = synthetic_dataset(Path(tmp) / "data", args.frames)
        ds = FrameDataset(data.records, build_train_transform(args.size, AugmentConfig(), pad_to), seed=0)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        ours_model = build_model(args.arch, args.encoder)
        ours_model.load_state_dict(copy.deepcopy(init))
        ours_model.to(device, memory_format=memory_format)
        plain_model = build_model(args.arch, args.encoder)
        plain_model.load_state_dict(copy.deepcopy(init))
        plain_model.to(device)
        ours_opt, plain_opt = build_optimizer(ours_model, optim), build_optimizer(plain_model, optim)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        def ours(epoch: int) -> float:
            ds.set_epoch(epoch)
            loader = make_loader(ds, args.batch, shuffle=True, seed=epoch, num_workers=workers,
                                 pin_memory=device.type == "cuda", drop_last=True)
            began = time.perf_counter()
            _, _, n = train_one_epoch(ours_model, loader, ours_opt, device=device, scaler=scaler,
                                      autocast_dtype=amp_dtype, channels_last=channels_last)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return n / (time.perf_counter() - began)

        def plain(epoch: int) -> float:
            ds.set_epoch(epoch)
            began = time.perf_counter()
            n = plain_epoch(plain_model, ds, plain_opt, args.batch, device, seed=epoch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return n / (time.perf_counter() - began)

        ours(0), plain(0)  # warm-up (allocator, kernels, worker start-up paths)
        best_ours = best_plain = 0.0
        for repeat in range(1, args.repeats + 1):
            best_ours = max(best_ours, ours(repeat))
            best_plain = max(best_plain, plain(repeat))
            logger.info("repeat %d: ours %.2f img/s, plain %.2f img/s", repeat, best_ours, best_plain)

    extras = f"workers {workers}, {'autocast ' + str(amp_dtype).replace('torch.', '') if amp_dtype else 'fp32'}"
    extras += ", channels-last" if channels_last else ""
    print(
        f"train bench {args.arch}/{args.encoder} {args.size}px batch {args.batch} on {device.type}: "
        f"ours {best_ours:.2f} img/s, plain {best_plain:.2f} img/s, ratio {best_ours / best_plain:.2f}x "
        f"({args.frames} frames/epoch from 1000x1000 PNGs, paper augmentation, best of {args.repeats}; {extras})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
