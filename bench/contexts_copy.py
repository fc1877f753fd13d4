"""Cost of pynetdicom's per-association copy of the node's supported presentation contexts.

pynetdicom deep-copies the SCP's supported contexts for every association it accepts. The
node builds the same contexts as its SCP does (:meth:`dicom_node.scp.StoreScp._build_ae`:
Verification plus every accepted storage SOP class with every transfer syntax the node takes)
and hands pynetdicom :class:`dicom_node.sop.SharedUidContext` copies of them, whose deep copy
shares the immutable UIDs. This script times ``copy.deepcopy`` of the whole list, plain
pynetdicom contexts against the node's, ``--repeats`` times each (interleaved), and prints ONE
summary line on stdout (medians), e.g.::

    contexts 171 (other_objects keep): deepcopy plain 30.7 ms, node's shared-UID 1.40 ms, 21.9x

    .venv/bin/python bench/contexts_copy.py [--repeats 10] [--other-objects keep|refuse]

A second or so on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

from pynetdicom import AE

from dicom_node.sop import (
    TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    SharedUidContext,
    accepted_sop_classes,
)


def node_contexts(other_objects: str) -> list:
    """The supported contexts of an AE built as the node's SCP builds its own."""
    ae = AE(ae_title="BENCH")
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    for uid in accepted_sop_classes(other_objects):
        ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
    return list(ae.supported_contexts)


def time_deepcopy(contexts: list) -> float:
    """Seconds for one ``copy.deepcopy`` of the whole list (what pynetdicom does per association)."""
    t0 = time.perf_counter()
    copy.deepcopy(contexts)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Time both kinds of context lists; one summary line on stdout. Returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="copies of each list (default 10)")
    parser.add_argument("--other-objects", choices=("keep", "refuse"), default="keep",
                        help="the node's other_objects setting (default keep, the node's default)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    plain = node_contexts(args.other_objects)
    shared = [SharedUidContext.of(cx) for cx in plain]
    copied = copy.deepcopy(shared)  # a copy must be a working context of its own
    if [str(c.abstract_syntax) for c in copied] != [str(c.abstract_syntax) for c in plain]:
        raise SystemExit("SharedUidContext copies lost their abstract syntaxes")
    copied[0].transfer_syntax = []
    if not shared[0].transfer_syntax:
        raise SystemExit("SharedUidContext copies share their transfer syntax list")
    times: dict[str, list[float]] = {"plain": [], "shared": []}
    for _ in range(args.repeats):
        times["plain"].append(time_deepcopy(plain))
        times["shared"].append(time_deepcopy(shared))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"contexts {len(plain)} (other_objects {args.other_objects}): deepcopy plain {med['plain']:.3g} ms, "
          f"node's shared-UID {med['shared']:.3g} ms, {med['plain'] / med['shared']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
