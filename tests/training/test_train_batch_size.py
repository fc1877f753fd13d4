"""batch_size: auto: the search for the largest batch within the GPU memory budget, with a
synthetic memory model standing in for trial steps (the search logic is device-independent)."""

from __future__ import annotations

import pytest
import torch

from tavicore.config import CONF_DIR
from training.batch_size import resolve_batch_size, search_batch_size
from training.config import CPU_AUTO_BATCH_SIZE, load_train_config
from training.errors import TrainingError

GIB = 2**30


def memory_model(base: float, per_sample: float, capacity: float, calls: list[int]):
    """Peak bytes of a trial step: base + per_sample * batch; None (out of memory) above capacity."""

    def probe(batch: int) -> int | None:
        calls.append(batch)
        peak = base + per_sample * batch
        return None if peak > capacity else int(peak)

    return probe


@pytest.mark.parametrize(("base", "per_sample", "expected"), [
    (2 * GIB, 1.0 * GIB, 34),   # 2 + b <= 0.9 * 40 -> b = 34
    (1 * GIB, 0.3 * GIB, 116),  # 1 + 0.3 b <= 36 -> b = 116
    (30 * GIB, 5 * GIB, 1),     # only one frame fits
])
def test_largest_batch_within_90_percent(base, per_sample, expected):
    calls: list[int] = []
    capacity = 40 * GIB
    batch = search_batch_size(memory_model(base, per_sample, capacity, calls), capacity=capacity,
                              fraction=(0.7, 0.9), max_batch=256)
    assert batch == expected
    assert base + per_sample * batch <= 0.9 * capacity < base + per_sample * (batch + 1)
    assert len(calls) <= 2 * 9 and len(set(calls)) == len(calls)  # doubling + bisection, no repeats


def test_out_of_memory_is_a_failed_probe_and_max_batch_caps():
    calls: list[int] = []
    capacity = 10 * GIB

    def probe(batch: int) -> int | None:
        calls.append(batch)
        return None if batch >= 20 else int(0.1 * GIB * batch)  # OOM long before the budget

    assert search_batch_size(probe, capacity=capacity, max_batch=256) == 19
    calls.clear()
    assert search_batch_size(memory_model(0, 0.01 * GIB, capacity, calls), capacity=capacity, max_batch=48) == 48
    assert max(calls) == 48


def test_nothing_fits_is_an_error():
    with pytest.raises(TrainingError, match="even a batch of 1"):
        search_batch_size(lambda b: None, capacity=8 * GIB)


def test_resolve_on_cpu_uses_the_documented_default():
    cfg = load_train_config(CONF_DIR / "train" / "cpu_tiny.yaml", overrides={"batch_size": "auto"})
    assert resolve_batch_size(cfg, torch.device("cpu"), 64, None) == CPU_AUTO_BATCH_SIZE == 2
    fixed = load_train_config(CONF_DIR / "train" / "cpu_tiny.yaml", overrides={"batch_size": 6})
    assert resolve_batch_size(fixed, torch.device("cpu"), 64, None) == 6
