"""``taviseg status``: the node's spool, work queue and outbox (works while the node runs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tavicore.config import CONF_DIR

logger = logging.getLogger(__name__)

HELP = "show the DICOM node's spool, work queue and outbox (read from its journal)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``taviseg status``."""
    parser.add_argument("--config", type=Path, default=CONF_DIR / "node.yaml",
                        help="node configuration (default: conf/node.yaml)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--recent", type=int, default=10, help="problem rows to list (default 10)")


def run(args: argparse.Namespace) -> int:
    """Print the status; returns 0."""
    from dicom_node.config import load_node_config
    from dicom_node.status import format_status, node_status

    cfg = load_node_config(args.config)
    status = node_status(cfg, recent=args.recent)
    if args.json:
        json.dump(status, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_status(status) + "\n")
    return 0
