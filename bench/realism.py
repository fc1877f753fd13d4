"""How real is the v2 (CT) phantom? Runs the realism fingerprint on a cohort generated at 1000 px.

Generates a cohort (default preset ``ct_realism``: 24 runs x 2 frames at 1000 px) into a
temporary folder, runs the shared fingerprint script (``fingerprint.py REAL_JSON 'images/*/*.png'
'{dir}/../../masks/{parent}/{stem}.png'``) on it and prints its table (with ``--table``) and its
summary line: on how many of the 32 statistics the real frames' median lies outside the
phantom frames' 10th-90th percentiles (v1: 12 of 32, the crude DRR experiment: 17 of 32).

    .venv/bin/python bench/realism.py [--preset ct_realism] [--patients N] [--size 1000]
        [--fingerprint DIR] [--keep OUT] [--table]

``--fingerprint`` is the folder holding ``fingerprint.py`` and ``real_frame_fingerprint.json``
(default: ``$TAVISEG_REALISM_DIR``, else ``../shared/realism`` relative to the repository).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tavicore.config import from_dict, to_dict
from tavidata.phantom import generate_cohort, load_phantom_preset
from tavidata.phantom.config import PhantomConfig

REPO = Path(__file__).resolve().parent.parent


def default_fingerprint_dir() -> Path:
    """``$TAVISEG_REALISM_DIR`` or ``../shared/realism`` next to the repository."""
    env = os.environ.get("TAVISEG_REALISM_DIR")
    return Path(env) if env else REPO.parent / "shared" / "realism"


def main(argv: list[str] | None = None) -> int:
    """Generate the cohort, fingerprint it and print the summary; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ct_realism", help="phantom preset (default ct_realism)")
    parser.add_argument("--patients", type=int, help="patients (overrides the preset)")
    parser.add_argument("--size", type=int, help="frame size (overrides the preset; compare at 1000-1024 px)")
    parser.add_argument("--seed", type=int, help="master seed (overrides the preset)")
    parser.add_argument("--fingerprint", type=Path, default=None, help="folder of fingerprint.py and the real JSON")
    parser.add_argument("--keep", type=Path, help="write the cohort here and keep it (default: a temporary folder)")
    parser.add_argument("--max", type=int, default=300, help="frames fingerprinted at most (default 300)")
    parser.add_argument("--table", action="store_true", help="print the whole table, not only the summary")
    args = parser.parse_args(argv)
    fp_dir = args.fingerprint or default_fingerprint_dir()
    script, real = fp_dir / "fingerprint.py", fp_dir / "real_frame_fingerprint.json"
    for path in (script, real):
        if not path.is_file():
            parser.error(f"{path} not found (set --fingerprint or $TAVISEG_REALISM_DIR)")
    config = load_phantom_preset(args.preset)
    overrides = {k: v for k, v in (("patients", args.patients), ("size", args.size), ("seed", args.seed)) if v}
    if overrides:
        data = to_dict(config)
        data.update(overrides)
        data["total_frames"] = None
        config = from_dict(PhantomConfig, data, source="command line")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "cohort"
        started = time.perf_counter()
        generate_cohort(out, config, contact_sheet=False, overwrite=True)
        gen_s = time.perf_counter() - started
        proc = subprocess.run(
            [sys.executable, str(script), str(real), str(out / "images" / "*" / "*.png"),
             "{dir}/../../masks/{parent}/{stem}.png", "--max", str(args.max)],
            capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    lines = proc.stdout.strip().splitlines()
    if args.table:
        print("\n".join(lines[:-1]))
    print(f"realism ({config.name}, generator {config.generator}, {config.patients * config.runs_per_patient} runs at "
          f"{config.size} px, generated in {gen_s:.0f} s): {lines[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
