"""Node end to end: latency from sending a run to its SEG stored in Orthanc, against pure inference.

A phantom cine run (default 60 frames of 1000x1000, :func:`tavidata.phantom.generate_run`,
written as a real X-Ray Angiographic Image file by
:func:`tavidata.phantom.dicom_export.write_xa_run`) is sent with dcmtk ``storescu`` to the
node running as a separate process (``python -m taviseg serve --config FILE``) whose only
destination is a real Orthanc (:func:`testkit.orthanc.start_orthanc`). The latency runs from
the start of the send until Orthanc's REST API lists a SEG referencing the run.

Baseline, measured in the same run: pure inference, i.e. ``InferenceEngine.predict`` (same
model folder, backend, device and batch size as the node, pre/post-processing and confidence
included) on the same frames, decoded beforehand, after a warm-up batch. Overhead is
``(latency - inference) / inference``: receiving, decoding, SEG (and SR/GSPS/SC) building,
the outbox, the C-STORE to Orthanc and every hand-over between them. The real-time factor is
the run's acquisition time at 15 frames/s divided by the latency (1.0: the SEG is back as
fast as the run was acquired).

The node is warmed up before anything is timed: the benchmark exports the ONNX model into
the node's cache first, the node is started (model loaded, ONNX Runtime session created, ready
file written), and a short warm-up run (``--batch`` frames) goes through the whole chain to
Orthanc. Baseline and node passes alternate ``--repeats`` times; the best of each is kept.
Prints ONE summary line on stdout, e.g.::

    node e2e manet/efficientnet-b4 512px cpu onnx batch 8: 60 frames 1000x1000, SEG in Orthanc
    after 21.3 s, pure inference 18.0 s, overhead 18% (target <= 25%), real-time factor 0.19

and on stderr where the node's time went (receive, queue, processing, delivery; decode and
SEG building timed in this process).

    .venv/bin/python bench/node_e2e.py [--frames 60] [--size 1000] [--arch manet]
        [--encoder efficientnet-b4] [--input-size 512] [--model DIR] [--device auto]
        [--backend auto] [--batch 8] [--outputs seg] [--repeats 2]

Default: a randomly initialised MA-Net/EfficientNet-B4 at 512 px (``--model DIR`` for a
trained folder). On 2 CPU cores about 3 minutes, more when other work shares them (each
pass is a full inference of the run; ONNX export and warm-up are not timed).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import BenchError, run_main, setup_logging, storescu, wait_until, work_folder  # noqa: E402

logger = logging.getLogger("bench.node_e2e")

#: Acquisition frame rate the real-time factor refers to.
ACQUISITION_FPS = 15.0
#: Overhead the node should stay under (printed with the figure, never asserted).
OVERHEAD_TARGET = 0.25
NODE_START_TIMEOUT_S = 300.0


@dataclass
class Timing:
    """What one timed node pass measured (seconds)."""

    latency: float
    send: float
    metrics: dict[str, float] = field(default_factory=dict)


def fmt(value: float) -> str:
    """Three significant figures at most, one decimal at least (21.3, 1.25, 0.0123)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def write_run(path: Path, run, run_index: int) -> tuple[Path, str, str]:
    """Write ``run`` as an XA file whose UIDs depend on ``run_index``; (path, study, SOP UID)."""
    import pydicom

    from tavidata.phantom.dicom_export import write_xa_run

    run = dataclasses.replace(run, meta={**run.meta, "run_index": run_index})
    write_xa_run(path, run, patient_id="BENCHE2E", series_number=run_index + 1)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return path, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


class SegFinder:
    """Finds, through Orthanc's REST API, the SEG referencing a given source instance."""

    def __init__(self, pacs) -> None:
        self.pacs = pacs
        self._refs: dict[str, tuple[str, int]] = {}

    def find(self, study_uid: str, sop_uid: str) -> tuple[str, int] | None:
        """(Orthanc id, NumberOfFrames) of the SEG of ``sop_uid``, or None while there is none."""
        for orthanc_id in self.pacs.find_instances(StudyInstanceUID=study_uid, Modality="SEG"):
            if orthanc_id not in self._refs:
                tags = self.pacs.instance_tags(orthanc_id)
                try:
                    ref = tags["ReferencedSeriesSequence"][0]["ReferencedInstanceSequence"][0]
                    self._refs[orthanc_id] = (str(ref["ReferencedSOPInstanceUID"]), int(tags["NumberOfFrames"]))
                except (KeyError, IndexError, TypeError, ValueError) as exc:
                    raise BenchError(f"SEG {orthanc_id} in Orthanc has no usable reference: {exc}") from exc
            ref_uid, frames = self._refs[orthanc_id]
            if ref_uid == sop_uid:
                return orthanc_id, frames
        return None


def scrape(metrics_port: int) -> dict[str, float]:
    """The node's histogram sums and counts (``taviseg_node_*_sum`` / ``_count``) by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("taviseg_node_") and ("_sum" in line or "_count" in line):
            name, _, value = line.rpartition(" ")
            key = name.split("{")[0].removeprefix("taviseg_node_")
            values[key] = values.get(key, 0.0) + float(value)
    return values


def time_node(node, finder: SegFinder, path: Path, study: str, sop: str, frames: int, outputs: int,
              metrics_port: int, timeout: float) -> Timing:
    """Send one run and wait for its SEG in Orthanc; the latency and the node's own timings.

    While the node processes, the wait polls the node's journal (a read-only SQLite query
    every 20 ms, negligible CPU); once the run is done it polls Orthanc's REST API every few
    milliseconds (so that polling Orthanc does not take CPU from the inference). After the SEG
    is found (the end of the latency), the node's metrics are read once every output has been
    recorded as delivered (the node records it after Orthanc's answer).
    """
    from dicom_node.journal import Journal

    before = scrape(metrics_port)
    journal = Journal(Path(node.cfg["state_dir"]) / "journal.sqlite", readonly=True)
    try:
        counts = journal.instance_counts()
        t0 = time.perf_counter()
        send = storescu(path, node.port, "TAVISEG")

        def processed() -> bool:
            now = journal.instance_counts()
            if now["failed"] > counts["failed"] or now["skipped"] > counts["skipped"]:
                raise BenchError(f"the node did not segment {path.name}: {now}\n{node.log()[-2000:]}")
            return now["done"] > counts["done"]

        wait_until(processed, timeout, f"node processing {path.name}", max_delay=0.02)
        found = wait_until(lambda: finder.find(study, sop), timeout, f"SEG of {path.name} in Orthanc",
                           max_delay=0.01)
        latency = time.perf_counter() - t0
    finally:
        journal.close()
    if found[1] != frames:
        raise BenchError(f"SEG {found[0]} has {found[1]} frames, expected {frames}")
    done = before.get("end_to_end_seconds_count", 0.0) + outputs
    after = wait_until(lambda: (m := scrape(metrics_port)).get("end_to_end_seconds_count", 0.0) >= done and m,
                       timeout, f"node recording the delivery of {outputs} output(s) of {path.name}",
                       max_delay=0.2)
    return Timing(latency, send, {k: after[k] - before.get(k, 0.0) for k in after})


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60, help="frames of the run (default 60)")
    parser.add_argument("--size", type=int, default=1000, help="frame rows = columns (default 1000)")
    parser.add_argument("--arch", default="manet", help="architecture of the random model (default manet)")
    parser.add_argument("--encoder", default="efficientnet-b4", help="encoder of the random model")
    parser.add_argument("--input-size", type=int, default=512, help="model input size of the random model")
    parser.add_argument("--model", type=Path, help="trained model folder (default: random initialisation)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (node and baseline)")
    parser.add_argument("--backend", default="auto",
                        help="auto, eager, onnx, onnx-int8, openvino-bf16, bf16 (node and baseline)")
    parser.add_argument("--batch", type=int, default=8, help="frames per inference batch (default 8)")
    parser.add_argument("--outputs", default="seg", help="node outputs, comma-separated: seg,sr,gsps,sc")
    parser.add_argument("--repeats", type=int, default=2, help="baseline and node passes, interleaved; "
                        "the best of each is kept (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--keep", type=Path, help="work folder to keep (logs, node state; default: temporary)")
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logs of the libraries too")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.repeats < 1 or args.batch < 1 or args.size < 64:
        parser.error("--frames, --repeats and --batch must be >= 1, --size >= 64")
    setup_logging(logger, args.verbose)
    with work_folder(args.keep, "taviseg-bench-e2e-") as work:
        return _run(args, work)


def _run(args: argparse.Namespace, work: Path) -> int:
    import torch

    from segmentation.dicom.reader import open_run
    from segmentation.dicom.seg import build_segmentation
    from segmentation.inference.engine import InferenceEngine
    from segmentation.models.folder import ModelSpec, load_model_folder, save_model_folder
    from segmentation.models.zoo import build_model
    from tavidata.phantom import PhantomConfig, generate_run, patient_seed
    from testkit.node import NodeProcess, base_config, write_config
    from testkit.orthanc import start_orthanc

    # ---- model folder, phantom run files ----------------------------------------------------
    if args.model is None:
        torch.manual_seed(0)
        spec = ModelSpec(architecture=args.arch, encoder=args.encoder, input_size=args.input_size,
                         provenance={"source": "random initialisation (benchmark)"})
        model_dir = save_model_folder(work / "model", spec, {0: build_model(args.arch, args.encoder).state_dict()})
    else:
        model_dir = args.model
    folder = load_model_folder(model_dir)
    spec = folder.spec

    t0 = time.perf_counter()
    config = PhantomConfig(size=args.size, seed=args.seed)
    run = generate_run(config, patient_seed(config, 0), 0, n_frames=args.frames)
    warm_frames = min(args.batch, args.frames)
    warm = dataclasses.replace(run, frames=run.frames[:warm_frames], masks=run.masks[:warm_frames])
    warm_file = write_run(work / "warmup.dcm", warm, 90)
    timed_files = [write_run(work / f"run{r}.dcm", run, r) for r in range(args.repeats)]
    logger.info("phantom run: %d frames %dx%d, %.1f MB per file, written in %.1f s", args.frames, args.size,
                args.size, timed_files[0][0].stat().st_size / 1e6, time.perf_counter() - t0)

    # ---- baseline engine (exports ONNX into the node's cache) -------------------------------
    state = work / "node"
    t0 = time.perf_counter()
    engine = InferenceEngine.from_folder(folder, device=args.device, backend=args.backend, batch_size=args.batch,
                                         onnx_cache_dir=state / "onnx-cache")
    logger.info("engine %s on %s ready in %.1f s (ONNX export or model load, not timed)", engine.backend_name,
                engine.device, time.perf_counter() - t0)
    t0 = time.perf_counter()
    source = open_run(timed_files[0][0])
    frames = np.stack([f for _, f in source.iter_frames()])
    decode_s = time.perf_counter() - t0
    engine.predict(frames[:warm_frames], bits_stored=source.bits_stored)  # warm-up (arena, caches)

    def baseline() -> tuple[float, np.ndarray]:
        started = time.perf_counter()
        pred = engine.predict(frames, bits_stored=source.bits_stored)
        return time.perf_counter() - started, np.asarray(pred.masks)

    # SEG building, timed here on the baseline's masks (the node does the same after inference)
    infer_s, masks = baseline()
    build_segmentation(source.dataset, masks[:1], frame_numbers=[1], algorithm_name="bench",  # warm-up (imports)
                       algorithm_version="1", series_number=9100, series_description="bench")
    t0 = time.perf_counter()
    seg = build_segmentation(source.dataset, masks, frame_numbers=list(range(1, args.frames + 1)),
                             algorithm_name="bench", algorithm_version="1", series_number=9100,
                             series_description="bench")
    seg_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    seg_encode_s = time.perf_counter() - t0
    inference = [infer_s]
    logger.info("in this process: decode %.2f s, inference %.2f s, SEG build %.2f s, SEG encode %.2f s (%.1f MB)",
                decode_s, infer_s, seg_build_s, seg_encode_s, len(buf.getvalue()) / 1e6)
    del seg, buf

    # ---- Orthanc and the node ---------------------------------------------------------------
    pacs = start_orthanc(work / "orthanc")
    node = None
    try:
        processing = {"processor_factory": None, "model_folder": str(model_dir),
                      "inference": {"device": args.device, "backend": args.backend, "batch_size": args.batch},
                      "outputs": [o.strip() for o in args.outputs.split(",") if o.strip()]}
        cfg = base_config(state, processing=processing, metrics={"enabled": True, "port": 0},
                          destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                                         "port": pacs.dicom_port}],
                          delivery={"initial_retry_s": 1.0, "max_retry_s": 5.0})
        t0 = time.perf_counter()
        node = NodeProcess(write_config(work / "node.yaml", cfg)).start(timeout=NODE_START_TIMEOUT_S)
        metrics_port = int(json.loads(node.ready_file.read_text())["metrics_port"])
        logger.info("node ready in %.1f s (model loaded from the ONNX cache)", time.perf_counter() - t0)
        finder = SegFinder(pacs)
        seg_timeout = 120.0 + 20.0 * infer_s
        n_out = len(processing["outputs"])
        warm_t = time_node(node, finder, *warm_file, warm_frames, n_out, metrics_port, seg_timeout)
        logger.info("warm-up run (%d frames): SEG in Orthanc after %.2f s", warm_frames, warm_t.latency)

        timings: list[Timing] = []
        for r, (path, study, sop) in enumerate(timed_files):
            if r > 0:
                inference.append(baseline()[0])
            t = time_node(node, finder, path, study, sop, args.frames, n_out, metrics_port, seg_timeout)
            timings.append(t)
            m = t.metrics
            queue_s = m.get("queue_seconds_sum", float("nan"))
            processing_s = m.get("processing_seconds_sum", float("nan"))
            logger.info(
                "pass %d: latency %.2f s: send %.2f s (node C-STORE handler %.2f s), queue %.2f s, processing "
                "%.2f s (decode, inference, %s, outbox), then the SEG to Orthanc %.2f s (delivery, Orthanc "
                "storing, polling); pure inference %.2f s",
                r + 1, t.latency, t.send, m.get("store_seconds_sum", float("nan")), queue_s, processing_s,
                args.outputs, t.latency - t.send - queue_s - processing_s, inference[-1])
        if node.terminate() != 0:
            logger.warning("node exit code was not 0; log tail:\n%s", node.log()[-2000:])
    except BaseException:
        if node is not None:
            logger.error("node log tail:\n%s", node.log()[-3000:])
        raise
    finally:
        if node is not None and node.proc is not None and node.proc.poll() is None:
            node.terminate()
        pacs.stop()

    latency = min(t.latency for t in timings)
    infer = min(inference)
    overhead = (latency - infer) / infer
    rtf = (args.frames / ACQUISITION_FPS) / latency
    print(f"node e2e {spec.architecture}/{spec.encoder} {spec.input_size}px {engine.device.type} "
          f"{engine.backend_name} batch {args.batch}: {args.frames} frames {args.size}x{args.size}, "
          f"SEG in Orthanc after {fmt(latency)} s, pure inference {fmt(infer)} s, overhead {100 * overhead:.0f}% "
          f"(target <= {100 * OVERHEAD_TARGET:.0f}%), real-time factor {fmt(rtf)}")
    return 0


if __name__ == "__main__":
    run_main(main, logger)
