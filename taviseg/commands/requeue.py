"""``taviseg requeue``: process failed runs again (by SOP Instance UID, or all of them)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tavicore.config import CONF_DIR

logger = logging.getLogger(__name__)

HELP = "put failed runs of the DICOM node back in its queue (by SOP Instance UID, or --all)"
DESCRIPTION = (
    "Failed runs keep their received instance in the spool (until limits.keep_failed_days); this "
    "puts them back in the node's queue. A running node picks them up within seconds, a stopped "
    "one at its next start. Runs whose spool file was already deleted are listed, not requeued."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``taviseg requeue``."""
    parser.add_argument("uids", nargs="*", metavar="SOP_INSTANCE_UID", help="failed runs to requeue")
    parser.add_argument("--all", action="store_true", help="requeue every failed run")
    parser.add_argument("--config", type=Path, default=CONF_DIR / "node.yaml",
                        help="node configuration (default: conf/node.yaml)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    """Requeue; returns 0, or 1 when a UID named no failed run or a run could not be requeued."""
    from dicom_node.config import load_node_config
    from dicom_node.status import requeue_failed

    if bool(args.uids) == bool(args.all):
        raise SystemExit("taviseg requeue: give SOP Instance UIDs or --all (not both)")
    cfg = load_node_config(args.config)
    result = requeue_failed(cfg, sop_instance_uids=None if args.all else list(args.uids))
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(f"requeued: {len(result['requeued'])} run(s)\n")
        for row in result["requeued"]:
            sys.stdout.write(f"  #{row['id']} {row['sop_instance_uid']}\n")
        for row in result["missing_file"]:
            sys.stdout.write(f"  not requeued (spool file deleted): #{row['id']} {row['sop_instance_uid']}\n")
        for uid in result["unknown"]:
            sys.stdout.write(f"  no failed run with SOP Instance UID {uid}\n")
    return 1 if result["missing_file"] or result["unknown"] else 0
