"""Reliability of the DICOM node against real peers: bad input, SIGKILL, PACS outage, load.

    .venv/bin/python -m bench.reliability [--only bad,crash,outage,load] [--quick] [--seed 0]
        [--mutants 520] [--crash-runs 50 --kills 15] [--outage-runs 20 --outage-s 10]
        [--senders 8 --runs-per-sender 10] [--workdir DIR] [-v]

Each scenario runs the node as a separate process (``python -m taviseg serve --config FILE``,
through :class:`testkit.node.NodeProcess`) on free loopback ports with its own state
folder, talks to it with real peers (dcmtk ``storescu``, pynetdicom, a real Orthanc as PACS) and
prints ONE summary line on stdout. Diagnostics go to stderr (``logging``; ``-v`` for more); the
files of a run (node logs, per-send table ``bad_inputs.tsv``, crash logs) stay in ``--workdir``
when one is given. Exit code 0 when every selected scenario met its expectations, 1 otherwise.
Every wait is bounded and polls; every loop is bounded in count; nothing leaves 127.0.0.1.

Processors: ``model`` is a real model folder (random-weight LinkNet/ResNet-18 at 64 px, the
folder tests/node/conftest.py ``tiny_model`` builds; SEG + SR outputs) run by the node's
ModelPipeline, i.e. the real DICOM readers and decoders; ``fake`` is the test processor
``testkit.fakes:threshold_processor`` (one SEG-like output), slowed down by
``TAVISEG_TEST_PROCESS_DELAY_S`` to widen the kill windows. Each line says which one ran.

bad: bad inputs
    Every file of the samples folder ($TAVISEG_DICOM_SAMPLES or ../shared/dicom-samples), sent
    unchanged with dcmtk storescu, then ``--mutants`` corrupt files (seeded) derived from the
    samples (the 96-frame JPEG run cut to its first 4 frames) and from small synthetic XA runs
    in seven transfer syntaxes: truncated at random offsets (header, pixel data, file meta),
    bit flips (header, pixel data, file meta, anywhere), wrong element lengths, zeroed /
    garbage / deleted / duplicated byte spans, damaged encapsulation (offset table, fragment
    lengths, delimiters), a File Meta claiming a wrong transfer syntax, garbage after the
    preamble, no preamble, the File Meta sent inside the data set, random files, huge or
    nonsensical NumberOfFrames / Rows / Columns / bit depths, more frames declared than the
    Pixel Data holds, missing Pixel Data and other missing attributes, garbled UIDs,
    calibration values and character sets, deeply nested sequences. Each mutant gets its own
    SOP Instance UID. Mutants are sent one C-STORE per association with pynetdicom's chunked
    send: the bytes after the File Meta go out exactly as they are, never decoded. When
    pynetdicom cannot read the File Meta at all (garbage after the preamble, no preamble, a
    truncated meta) the same bytes are sent as the data set under the command of the file they
    came from ("sent raw"). A mutant the SCU refuses to propose or send (e.g. a UID pynetdicom
    rejects) counts as "not sendable", separately from the sent ones.

    A send is ANSWERED CORRECTLY when the node returned a C-STORE response and:
      * the status is Success (0x0000) -- the node claims the bytes are stored durably -- and
        afterwards the journal records that SOP Instance UID with a final state: ``done``,
        ``skipped`` (not segmentable, reason recorded), ``kept`` (non-image object),
        ``superseded`` (the same UID arrived again before processing; samples only) or
        ``failed`` with a non-empty reason; never still ``received``/``processing`` once the
        node has drained (bounded wait), never missing; or
      * the status is a failure status of PS3.4 C-STORE: 0xA7xx (out of resources), 0xA9xx
        (data set does not match SOP class), 0xCxxx (cannot understand), 0x0122 (SOP class
        not supported), 0x0117 (invalid object instance). Not 0x0110: this node answers
        0x0110 only for an internal error (a bug). Unmodified samples must be answered
        Success; or
      * the node refused the proposed presentation context at association (a File Meta that
        names a SOP class or transfer syntax the node does not accept).
    Anything else is a wrong answer: 0x0110, warning or unknown statuses, an association the
    node dropped or aborted without answering, Success for an instance the journal never
    finishes. The line counts these as "acceptable answer N of M": a no-crash, no-bug check
    that takes any correct refusal as right.

    "expected status N of M" is the stricter check, on the sends whose answer follows from what
    was broken (:func:`bench.reliability.mutants.predicted_answers`, with the node's default
    limits); the answer must be the predicted one, and a Success must also pass the journal
    check above:
      * unmodified samples: Success;
      * damage confined to the Pixel Data of an image (bit flips, truncation inside it, damaged
        encapsulation, odd/UN/short/empty Pixel Data, more frames declared than it holds) and
        values the handler does not check (bit depths, photometric interpretation, calibration,
        text): Success, since the handler parses the header only and the worker decodes;
      * no readable data set (garbage after the preamble or the File Meta, random files, a
        truncated File Meta): 0xC210;
      * a File Meta claiming a transfer syntax the node does not accept: context refused;
      * NumberOfFrames 0 / -1 / not a number: 0xA900; above 5000: 0xA702; empty: Success;
      * Rows or Columns 0: 0xA900; Rows x Columns above 4096 x 4096: 0xA701; else Success;
      * Rows, Columns, SOP Class, SOP Instance, Study or Series UID missing: 0xA900 (SOP Class
        and Instance both: 0xC210); other attributes missing: Success;
      * Study/Series UID empty: 0xA900; garbled or over 64 characters: 0xC210.
    Random byte damage (bit flips in the header or anywhere, wrong lengths, zeroed, random,
    deleted or repeated spans, truncation in the header, nested sequences...) can land anywhere,
    and a few value changes depend on a reader's leniency (NumberOfFrames '1.5', a changed SOP
    Instance UID that pydicom copies into the File Meta, a File Meta claiming another accepted
    transfer syntax), so no status is predicted for them: those sends count only in "acceptable
    answer". The per-send table (``bad_inputs.tsv``) has an ``expected`` column. A CRASH is the node
    process exiting (it is then restarted and the run goes on);
    after every send the bench also sends a C-ECHO, which must be answered Success.
    "unexpected-error failures" counts instances failed with the worker's "unexpected ..."
    reason (an exception outside the node's domain errors: recorded, but a sign of a bug).

crash: crash safety
    ``--crash-runs`` small synthetic XA runs (8 frames 128x128) sent one association each by a
    sender that re-sends a run until it is answered Success (as an angiography system would),
    while the node is SIGKILLed ``--kills`` times (seeded) at moments drawn from: mid-transfer
    (the node has written part of a data set to disk), just after a Success answer, while a
    run is being processed, while outputs wait for delivery, at a random time; the node is
    restarted after each kill with a small max PDU so transfers span many PDUs. Then the node
    drains and the destination (a real Orthanc, or a folder when Orthanc is missing) is
    compared with the expected outputs: outputs have deterministic SOP Instance UIDs
    (:func:`dicom_node.pipeline.derive_uid`), so LOST = expected outputs of runs answered
    Success that are not at the destination and DUPLICATES = outputs at the destination
    beyond the expected ones (a second object for the same run, or a UID stored twice).
    Re-deliveries of the same UID (replaced in place, harmless) are reported separately.

outage: PACS outage
    ``--outage-runs`` runs sent while Orthanc is the destination; Orthanc is killed (SIGKILL:
    an abrupt outage) once a quarter of the outputs have been delivered (runs still being
    processed), kept down at least ``--outage-s`` seconds (and until every run is processed and a delivery attempt has
    failed), then restarted on the same storage folder and ports. Counts the outputs that were
    waiting and were delivered after it came back, against the expected number.

load: load
    ``--senders`` concurrent senders (dcmtk storescu processes, pynetdicom threads without it)
    x ``--runs-per-sender`` runs each (8 frames 128x128), one association per sender. Counts
    answered, processed and delivered runs; reports the node's peak memory (VmHWM of
    /proc/<pid>/status, its resident-set high-water mark) and the wall time from the first
    send until the last output was delivered.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
