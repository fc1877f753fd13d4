"""``taviseg serve``: run the DICOM node (receive runs, segment them, send SEG to the PACS)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tavicore.config import CONF_DIR, parse_override

logger = logging.getLogger(__name__)

HELP = "run the DICOM node: receive angiography runs, return SEG (and SR/GSPS/SC) to the PACS"
DESCRIPTION = (
    "Listen for C-STORE from angiography systems (AE title, port and allowed callers in the "
    "configuration), store each run durably, segment it with the configured model folder and "
    "deliver the results by C-STORE to the configured destinations (or to a folder). Stops "
    "gracefully on SIGTERM/SIGINT; unfinished work resumes at the next start."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``taviseg serve``."""
    parser.add_argument("--config", type=Path, default=CONF_DIR / "node.yaml",
                        help="node configuration (default: conf/node.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a configuration key, e.g. --set port=11113 (repeatable)")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration (and load the model) and exit")


def _check_hosts(cfg) -> None:
    """Every ``allowed_callers[].hosts`` entry that is a name must resolve (``--check``).

    Raises:
        ConfigError: a name that does not resolve, naming the AE title and the entry.
    """
    from dicom_node.config import ConfigError, resolve_host_entry

    for caller in cfg.allowed_callers:
        for host in caller.hosts:
            try:
                addresses = resolve_host_entry(host)
            except ValueError as exc:
                raise ConfigError(f"allowed_callers {caller.ae_title.strip()}: {exc}") from None
            logger.info("allowed_callers %s: %s -> %s", caller.ae_title.strip(), host, ", ".join(addresses))


def run(args: argparse.Namespace) -> int:
    """Load the configuration and serve until stopped; returns the exit code."""
    from dicom_node.config import load_node_config

    overrides = dict(parse_override(o) for o in args.overrides)
    cfg = load_node_config(args.config, overrides=overrides)
    if args.check:
        from dicom_node.pipeline import load_processor
        from dicom_node.tls import server_context

        if cfg.tls.enabled:
            server_context(cfg.tls)
        _check_hosts(cfg)
        processor = load_processor(cfg.processing, onnx_cache_dir=cfg.state_dir / "onnx-cache")
        logger.info(
            "configuration %s is valid; processor %s version %s", args.config, processor.name, processor.version
        )
        return 0
    from dicom_node.node import serve

    return serve(cfg)
