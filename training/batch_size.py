"""``batch_size: auto``: the largest batch that keeps a training step within ~70-90% of GPU memory.

The paper set the batch size per model "to use 70-90% of GPU memory". On a GPU we measure it:
a trial training step (forward, backward, optimizer step, under the run's autocast and memory
format) on a throw-away copy of the model, for growing batch sizes (doubling), then a binary
search between the last batch that fitted and the first that did not. A batch "fits" when the
step's peak reserved memory stays at or below the upper fraction and does not run out of
memory. On a CPU there is no memory budget to measure: ``auto`` means
:data:`training.config.CPU_AUTO_BATCH_SIZE` (2, the batch size of the CPU timings in the spec).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import torch

from training.config import CPU_AUTO_BATCH_SIZE, TrainConfig
from training.errors import TrainingError

logger = logging.getLogger(__name__)

#: A probe runs trial steps at a batch size and returns the peak memory in bytes, or None (OOM).
Probe = Callable[[int], "int | None"]


def search_batch_size(
    probe: Probe,
    *,
    capacity: int,
    fraction: tuple[float, float] = (0.7, 0.9),
    max_batch: int = 256,
    start: int = 2,
) -> int:
    """The largest batch size whose peak memory is at most ``fraction[1] * capacity``.

    Grows the batch by doubling from ``start`` until a probe exceeds the budget (or runs out
    of memory, or reaches ``max_batch``), then bisects between the last fitting and the first
    failing size. ``fraction[0]`` is only reported: a result below it means ``max_batch`` was
    reached or memory use jumps between neighbouring batch sizes.

    Args:
        probe: Trial function (batch size -> peak bytes, or None when out of memory).
        capacity: Total device memory in bytes.
        fraction: Target band (low, high) of the capacity.
        max_batch: Upper bound of the search.
        start: First batch size tried.

    Returns:
        The chosen batch size (>= 1).

    Raises:
        TrainingError: even a batch of 1 does not fit.
    """
    if capacity <= 0:
        raise TrainingError(f"device memory capacity must be positive, got {capacity}")
    budget = fraction[1] * capacity
    results: dict[int, int | None] = {}

    def fits(batch: int) -> bool:
        if batch not in results:
            results[batch] = probe(batch)
            peak = results[batch]
            logger.info(
                "auto batch size: batch %d -> %s", batch,
                "out of memory" if peak is None else f"{peak / capacity:.0%} of GPU memory",
            )
        peak = results[batch]
        return peak is not None and peak <= budget

    good, bad = 0, None
    batch = max(1, min(start, max_batch))
    for _ in range(64):  # doubling phase (bounded)
        if fits(batch):
            good = batch
            if batch >= max_batch:
                break
            batch = min(batch * 2, max_batch)
        else:
            bad = batch
            break
    for _ in range(64):  # bisection between the last fit and the first failure (bounded)
        if bad is None or bad - good <= 1:
            break
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    if good == 0:
        raise TrainingError(
            f"auto batch size: even a batch of 1 needs more than {fraction[1]:.0%} of the "
            f"{capacity / 2**30:.1f} GiB GPU memory; use a smaller model or input size"
        )
    peak = results.get(good)
    if peak is not None and peak < fraction[0] * capacity:
        logger.warning(
            "auto batch size %d uses %.0f%% of GPU memory, below the %.0f%% target (max_batch %d)",
            good, 100 * peak / capacity, 100 * fraction[0], max_batch,
        )
    return good


def _gpu_probe(cfg: TrainConfig, device: torch.device, input_size: int, autocast_dtype: torch.dtype | None) -> Probe:
    """A probe running two training steps of a fresh copy of the configured model."""
    from segmentation.models.zoo import build_model
    from training.loss import SoftDiceLoss
    from training.optim import build_optimizer

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    loss_fn = SoftDiceLoss()

    def probe(batch: int) -> int | None:
        model = optimizer = x = y = None
        try:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            model = build_model(cfg.model.architecture, cfg.model.encoder).to(device, memory_format=memory_format)
            model.train()
            optimizer = build_optimizer(model, cfg.optim)
            scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
            x = torch.rand(batch, 1, input_size, input_size, device=device).to(memory_format=memory_format)
            y = (torch.rand(batch, 1, input_size, input_size, device=device) > 0.5).float()
            for _ in range(2):
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    logits = model(x)
                scaler.scale(loss_fn(logits, y)).backward()
                scaler.step(optimizer)
                scaler.update()
            torch.cuda.synchronize(device)
            return int(torch.cuda.max_memory_reserved(device))
        except torch.OutOfMemoryError:
            return None
        finally:
            del model, optimizer, x, y
            gc.collect()
            torch.cuda.empty_cache()

    return probe


def resolve_batch_size(
    cfg: TrainConfig, device: torch.device, input_size: int, autocast_dtype: torch.dtype | None
) -> int:
    """The batch size of a run: ``cfg.batch_size``, or the ``auto`` search on a GPU.

    Args:
        cfg: Training configuration.
        device: Training device.
        input_size: Network input size (padded).
        autocast_dtype: Autocast dtype of the run (None: fp32).

    Returns:
        The batch size.

    Raises:
        TrainingError: the model does not fit even with a batch of 1.
    """
    if cfg.batch_size != "auto":
        return int(cfg.batch_size)
    if device.type != "cuda":
        logger.info("batch_size auto on %s: using the CPU default %d", device, CPU_AUTO_BATCH_SIZE)
        return CPU_AUTO_BATCH_SIZE
    _free, total = torch.cuda.mem_get_info(device)
    rng_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device)
    try:
        batch = search_batch_size(
            _gpu_probe(cfg, device, input_size, autocast_dtype),
            capacity=int(total), fraction=cfg.memory_fraction, max_batch=cfg.max_batch_size,
        )
    finally:  # the trial models must not shift the run's random streams
        torch.set_rng_state(rng_state)
        torch.cuda.set_rng_state(cuda_state, device)
    logger.info("batch_size auto: %d (%.1f GiB GPU)", batch, total / 2**30)
    return batch
