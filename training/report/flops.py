"""Model cost for Table 2: parameter count and FLOPs at the configured input size.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs
per multiply-add (convolutions, matrix products); docs/benchmark.md ("Corrections") notes it agrees with
fvcore, while thop and ptflops undercount EfficientNet models. The model and its input are
built on the ``meta`` device, so no memory is allocated and nothing is computed (a paper-size
model at 896 px is counted in seconds on a CPU); if a model cannot run on ``meta`` the count
falls back to a real CPU forward pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCost:
    """Parameters and FLOPs of one architecture/encoder at one input size."""

    architecture: str
    encoder: str
    input_size: int
    network_size: int
    params: int
    flops: int | None

    @property
    def params_m(self) -> float:
        """Parameters in millions."""
        return self.params / 1e6

    @property
    def gflops(self) -> float | None:
        """FLOPs in units of 1e9 (None when not counted)."""
        return None if self.flops is None else self.flops / 1e9


def count_parameters(model: torch.nn.Module) -> int:
    """Sum of ``p.numel()`` over the model's parameters."""
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model: torch.nn.Module, size: int, *, in_channels: int = 1, device: str | torch.device = "cpu") -> int:
    """FLOPs of one forward pass of a ``1 x in_channels x size x size`` input (2 per multiply-add)."""
    x = torch.empty(1, in_channels, size, size, device=device)
    if str(device) != "meta":
        x.zero_()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def measure(
    architecture: str, encoder: str, input_size: int, *, in_channels: int = 1, flops: bool = True
) -> ModelCost:
    """Build the model (random weights, offline) and measure its parameters and FLOPs.

    The network runs at ``padded_input_size(architecture, input_size)`` (624 -> 640 for the
    architectures that need a multiple of 32), which is what the FLOPs are counted at.

    Raises:
        ModelError: unknown architecture or encoder.
    """
    from segmentation.models.zoo import build_model, padded_input_size

    size = padded_input_size(architecture, input_size)
    try:
        with torch.device("meta"):
            model = build_model(architecture, encoder, in_channels=in_channels)
        on = "meta"
    except (NotImplementedError, RuntimeError) as exc:
        logger.info("%s/%s cannot be built on meta (%s); using the CPU", architecture, encoder, exc)
        model = build_model(architecture, encoder, in_channels=in_channels)
        on = "cpu"
    params = count_parameters(model)
    n_flops = None
    if flops:
        try:
            n_flops = count_flops(model, size, in_channels=in_channels, device=on)
        except (NotImplementedError, RuntimeError) as exc:
            if on == "cpu":
                raise
            logger.info("%s/%s cannot run on meta (%s); counting on the CPU", architecture, encoder, exc)
            model = build_model(architecture, encoder, in_channels=in_channels)
            n_flops = count_flops(model, size, in_channels=in_channels, device="cpu")
    logger.debug("%s/%s @%d: %.2f M params, %s FLOPs", architecture, encoder, size, params / 1e6, n_flops)
    return ModelCost(architecture, encoder, int(input_size), size, params, n_flops)
