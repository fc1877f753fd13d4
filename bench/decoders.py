"""Time every available decoder on the frames of DICOM files: the evidence behind
:data:`segmentation.dicom.decode.DECODER_PREFERENCE`.

Usage::

    python bench/decoders.py FILE [FILE ...] [--repeats 5] [--frames 8]

Prints one line per (file, decoder): median milliseconds per frame, and whether the decoded
frames equal those of the first decoder that worked (lossless agreement).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import generate_frames

from segmentation.dicom.decode import GDCM_DIRECT, FrameCodec, PixelLayout, decode_with_gdcm, to_model_convention
from segmentation.errors import DicomDecodeError

logger = logging.getLogger(__name__)


def time_decoders(path: Path, *, repeats: int = 5, max_frames: int = 8) -> list[tuple[str, float, bool]]:
    """Median ms/frame of each decoder on up to ``max_frames`` frames of ``path``.

    Returns (decoder name, ms per frame or NaN when it failed, equal to the first working
    decoder's output). Raises DicomDecodeError for native (uncompressed) files.
    """
    ds = pydicom.dcmread(path)
    ts = ds.file_meta.TransferSyntaxUID
    layout = PixelLayout.from_dataset(ds, ts)
    if not layout.is_encapsulated:
        raise DicomDecodeError(f"{path}: {ts.name} is not compressed; nothing to compare")
    encoded = list(generate_frames(ds.PixelData, number_of_frames=layout.number_of_frames))[:max_frames]
    results: list[tuple[str, float, bool]] = []
    reference: list[np.ndarray] | None = None
    for name in [*FrameCodec(layout).plugins, GDCM_DIRECT]:
        codec = FrameCodec(layout)
        timings: list[float] = []
        try:
            for _ in range(repeats):
                start = time.perf_counter()
                if name == GDCM_DIRECT:
                    out = [to_model_convention(decode_with_gdcm(f, layout),
                                               layout.photometric_interpretation, layout)
                           for f in encoded]
                else:
                    codec._plugins, codec._last_ok = [name], None  # pin one plugin
                    out = [codec.decode(f) for f in encoded]
                timings.append((time.perf_counter() - start) * 1000.0 / len(encoded))
        except DicomDecodeError as exc:
            logger.debug("%s failed on %s: %s", name, path.name, exc)
            results.append((name, float("nan"), False))
            continue
        if reference is None:
            reference = out
        same = all(np.array_equal(a, b) for a, b in zip(out, reference))
        results.append((name, statistics.median(timings), same))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: print the timing table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args(argv)
    for path in args.files:
        try:
            rows = time_decoders(path, repeats=args.repeats, max_frames=args.frames)
        except DicomDecodeError as exc:
            sys.stdout.write(f"{path.name}: skipped ({exc})\n")
            continue
        for name, ms, same in rows:
            verdict = "failed" if ms != ms else f"{ms:7.2f} ms/frame{'' if same else '  (differs)'}"
            sys.stdout.write(f"{path.name:42s} {name:12s} {verdict}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
