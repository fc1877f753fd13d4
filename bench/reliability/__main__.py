"""Command line of the reliability bench: ``python -m bench.reliability [...]``."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pydicom.config

from bench import reliability
from bench.reliability import hostile
from bench.reliability.bad_input import scenario_bad
from bench.reliability.crash import scenario_crash
from bench.reliability.harness import Bench, BenchError, logger
from bench.reliability.load import scenario_load
from bench.reliability.outage import scenario_outage
from testkit.orthanc import OrthancError

SCENARIOS = ("bad", "crash", "outage", "load", *hostile.HOSTILE_SCENARIOS)
QUICK = {"mutants": 40, "crash_runs": 12, "kills": 4, "outage_runs": 6, "outage_s": 2.0,
         "senders": 4, "runs_per_sender": 3, "load_processor": "fake", **hostile.QUICK}
FULL = {"mutants": 520, "crash_runs": 50, "kills": 15, "outage_runs": 20, "outage_s": 10.0,
        "senders": 8, "runs_per_sender": 10, "load_processor": "model", **hostile.FULL}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; sizes left unset take the --quick or the full defaults."""
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=reliability.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)})")
    parser.add_argument("--quick", action="store_true", help="small counts (a couple of minutes in all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of mutants and kill moments")
    parser.add_argument("--mutants", type=int,
                        help=f"bad inputs: mutants (default {FULL['mutants']}, quick {QUICK['mutants']})")
    parser.add_argument("--bad-processor", choices=("model", "fake"), default="model")
    parser.add_argument("--crash-runs", type=int, help=f"crash: runs (default {FULL['crash_runs']})")
    parser.add_argument("--kills", type=int, help=f"crash: SIGKILLs (default {FULL['kills']})")
    parser.add_argument("--crash-processor", choices=("model", "fake"), default="fake")
    parser.add_argument("--crash-delay-s", type=float, default=0.3, help="crash: fake processor delay per run")
    parser.add_argument("--max-resends", type=int, default=10, help="crash: re-sends of one run at most")
    parser.add_argument("--outage-runs", type=int, help=f"outage: runs (default {FULL['outage_runs']})")
    parser.add_argument("--outage-s", type=float,
                        help=f"outage: least time Orthanc stays down (default {FULL['outage_s']:g})")
    parser.add_argument("--outage-processor", choices=("model", "fake"), default="fake")
    parser.add_argument("--outage-delay-s", type=float, default=0.5, help="outage: fake processor delay per run")
    parser.add_argument("--senders", type=int, help=f"load: concurrent senders (default {FULL['senders']})")
    parser.add_argument("--runs-per-sender", type=int,
                        help=f"load: runs per sender (default {FULL['runs_per_sender']})")
    parser.add_argument("--load-processor", choices=("model", "fake"),
                        help="load: processor (default model; fake with --quick)")
    hostile.add_arguments(parser)
    parser.add_argument("--drain-timeout", type=float, default=900.0,
                        help="longest wait for the node to finish its work")
    parser.add_argument("--node-memory-limit-gib", type=float, default=12.0,
                        help="address-space cap of the node process (0: none), protects a shared machine")
    parser.add_argument("--workdir", type=Path, help="keep every file of the run here (default: a temporary folder)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more diagnostics on stderr")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if "hostile" in args.only:  # every hostile-peer and full-disk scenario
        i = args.only.index("hostile")
        args.only[i:i + 1] = [s for s in hostile.HOSTILE_SCENARIOS if s not in args.only]
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        parser.error(f"--only: unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected scenarios, one summary line each on stdout; exit code 0 when all passed."""
    args = parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL if args.verbose < 2 else logging.INFO)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module="pydicom")
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="taviseg-reliability-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir)
    if bench.orthanc is None:
        logger.warning("Orthanc is not installed: crash and load use a folder destination, outage is skipped")
    if bench.storescu is None:
        logger.warning("dcmtk storescu not found: samples and load are sent with pynetdicom")
    functions = {"bad": scenario_bad, "crash": scenario_crash, "outage": scenario_outage, "load": scenario_load,
                 **hostile.SCENARIO_FUNCTIONS}
    all_ok = True
    try:
        for name in args.only:
            t0 = time.monotonic()
            try:
                line, ok = functions[name](bench)
            except (BenchError, OrthancError, TimeoutError, RuntimeError, OSError) as exc:
                logger.exception("scenario %s could not run", name)
                line, ok = f"{name}: NOT RUN ({type(exc).__name__}: {exc})".replace("\n", " ")[:600], False
            print(line, flush=True)
            logger.info("scenario %s finished in %.0f s (%s)", name, time.monotonic() - t0, "ok" if ok else "FAILED")
            all_ok &= ok
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
