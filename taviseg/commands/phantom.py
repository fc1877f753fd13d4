"""``taviseg phantom``: generate a synthetic TAVI aortography cohort (frames + masks).

Thin wrapper over :func:`tavidata.phantom.generate_cohort` with a preset of
``conf/phantom.yaml`` (or another presets file) and a few overrides.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "generate a synthetic TAVI aortography cohort (frames, masks, optional DICOM XA runs)"
DESCRIPTION = """\
Generate a cohort of synthetic TAVI cine runs as a data set (PNG frames and masks, manifest),
with runs.json (every run's settings) and contact_sheet.png; with --dicom also one multi-frame
X-Ray Angiographic Image per run under OUT/dicom/<patient>/<run>.dcm with <run>_mask.npz beside it.
Presets (conf/phantom.yaml): tiny (4 patients, 256 px), demo (12 patients x 2 runs, 512 px),
paper (80 patients, 2,854 frames, 1000 px). Same preset and seed: byte-identical output."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the phantom options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--preset", default="tiny", help="preset name in the presets file (default: tiny)")
    parser.add_argument("--presets-file", type=Path, help="presets YAML (default: conf/phantom.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="cohort folder to create")
    parser.add_argument("--seed", type=int, help="master seed (overrides the preset's)")
    parser.add_argument("--patients", type=int, help="number of patients (overrides the preset's)")
    parser.add_argument("--size", type=int, help="frame size in px (overrides the preset's)")
    parser.add_argument("--dicom", action="store_true", help="also write each run as a multi-frame XA DICOM file")
    parser.add_argument("--contact-sheet", action=argparse.BooleanOptionalAction, default=True,
                        help="write contact_sheet.png (default: yes)")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate the cohort and print where it is with a one-line summary."""
    from tavicore.config import from_dict, to_dict
    from tavidata.phantom import generate_cohort, load_phantom_preset
    from tavidata.phantom.config import PRESETS_FILE, PhantomConfig
    from tavidata.phantom.stats import describe

    config = load_phantom_preset(args.preset, path=args.presets_file or PRESETS_FILE)
    overrides = {k: v for k, v in (("seed", args.seed), ("patients", args.patients), ("size", args.size))
                 if v is not None}
    if overrides:
        data = to_dict(config)
        data.update(overrides)
        if "patients" in overrides and config.total_frames is not None:
            data["total_frames"] = None  # the preset's total no longer fits another cohort size
        if "size" in overrides:
            data["spacing_mm"] = None  # keep the physical field of view: 390.625 mm / size
        config = from_dict(PhantomConfig, data, source="command line")
    out = generate_cohort(args.out, config, progress=not args.no_progress, dicom=args.dicom,
                          contact_sheet=args.contact_sheet, overwrite=args.overwrite)
    runs = json.loads((out / "runs.json").read_text(encoding="utf-8"))
    frames = sum(r["frames"] for r in runs)
    stages = {s: sum(1 for r in runs if r["stage"] == s) for s in ("overview", "positioning", "deployment", "control")}
    print(out)
    spacings = sorted(float(r["spacing_mm"][0]) for r in runs if r.get("spacing_mm"))
    if spacings and spacings[-1] - spacings[0] > 1e-6:  # v2: the spacing follows each run's geometry
        spacing = f"{spacings[0]:.4g}-{spacings[-1]:.4g} mm/px at the isocentre"
    else:
        spacing = f"{config.pixel_spacing_mm:.6g} mm/px"
    print(f"phantom {config.name}: {config.patients} patients, {len(runs)} runs, {frames} frames at "
          f"{config.size}x{config.size} px ({spacing}), seed {config.seed}; stages "
          + ", ".join(f"{k} {v}" for k, v in stages.items())
          + ("; DICOM XA runs in " + str(out / "dicom") if args.dicom else ""))
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    print(f"image statistics, median (5th-95th percentile) of {stats['measured']}: {describe(stats['summary'])}")
    return 0

