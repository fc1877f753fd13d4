"""Processing in a child process (dicom_node/isolation.py): a native crash while processing a
run fails that run with the reason; the node keeps answering and processes the next runs.

Regression of a crash found by bench.reliability: a JPEG-LS XA run whose Rows is one more
than its codestream's makes GDCM throw a C++ exception through its Python binding, which ends
in std::terminate (SIGABRT). That used to kill the node process itself, and again at every
restart until the journal failed the run after three interruptions.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEGLSLossless

from dicom_node.config import ProcessingConfig
from dicom_node.errors import NodeConfigError, ProcessingError
from dicom_node.isolation import IsolatedProcessor, ProcessorDied
from dicom_node.spool import StoredInstance
from testkit.fakes import ThresholdProcessor
from testkit.node import (
    NodeProcess,
    base_config,
    echo,
    journal_counts,
    make_xa,
    send,
    wait_until,
    write_config,
)

ABORTING = "tests.node.test_isolation:aborting_processor"


class _AbortingProcessor(ThresholdProcessor):
    """The threshold fake, except that it aborts the process for PatientID ABORT."""

    def process(self, instance: StoredInstance):
        if pydicom.dcmread(instance.path, stop_before_pixels=True).PatientID == "ABORT":
            os.abort()  # what an uncaught C++ exception in a decoder does
        return super().process(instance)


def aborting_processor(cfg: ProcessingConfig) -> _AbortingProcessor:
    """Factory named by ``processing.processor_factory`` in these tests."""
    return _AbortingProcessor(cfg)


def _instance(ds: pydicom.Dataset, path: Path, instance_id: int = 1) -> StoredInstance:
    ds.save_as(path, enforce_file_format=True)
    return StoredInstance(id=instance_id, path=path, kind="image", sop_instance_uid=str(ds.SOPInstanceUID),
                          sop_class_uid=str(ds.SOPClassUID), study_instance_uid=str(ds.StudyInstanceUID),
                          frames=int(ds.NumberOfFrames), size_bytes=path.stat().st_size)


def test_a_run_that_aborts_the_processing_process_fails_and_the_next_one_is_processed(tmp_path):
    processor = IsolatedProcessor(ProcessingConfig(processor_factory=ABORTING))
    try:
        assert (processor.name, processor.version) == ("threshold-test", "test-1")
        first = processor.pid
        outputs = processor.process(_instance(make_xa(seed=1), tmp_path / "ok1.dcm"))
        assert [o.kind for o in outputs] == ["seg"]
        assert outputs[0].dataset.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        poison = make_xa(seed=2)
        poison.PatientID = "ABORT"
        with pytest.raises(ProcessorDied, match=r"died 2 times .*SIGABRT"):
            processor.process(_instance(poison, tmp_path / "abort.dcm"))
        again = processor.process(_instance(make_xa(seed=3), tmp_path / "ok2.dcm"))
        assert len(again) == 1 and processor.pid not in (None, first)  # a fresh processing process
        short = make_xa(seed=4)
        short.NumberOfFrames = 9  # Pixel Data holds 3: the processor's own ProcessingError comes back
        with pytest.raises(ProcessingError, match="cannot decode") as caught:
            processor.process(_instance(short, tmp_path / "short.dcm"))
        assert not isinstance(caught.value, ProcessorDied)
    finally:
        processor.close()
    assert processor.pid is None


def test_the_processing_process_ignores_sigterm_and_finishes_the_run(tmp_path, monkeypatch):
    """systemd signals the whole control group on stop: the run in hand must still finish."""
    monkeypatch.setenv("TAVISEG_TEST_PROCESS_DELAY_S", "1.0")
    processor = IsolatedProcessor(ProcessingConfig(processor_factory=ABORTING))
    try:
        instance = _instance(make_xa(seed=7), tmp_path / "slow.dcm")
        results: list = []
        worker = threading.Thread(target=lambda: results.append(processor.process(instance)))
        worker.start()
        os.kill(processor.pid, signal.SIGTERM)
        worker.join(60)
        assert len(results) == 1 and [o.kind for o in results[0]] == ["seg"]
    finally:
        processor.close()


def test_a_processor_that_cannot_load_is_a_config_error():
    with pytest.raises(NodeConfigError, match="tests.node.no_such_module"):
        IsolatedProcessor(ProcessingConfig(processor_factory="tests.node.no_such_module:factory"))


@pytest.mark.slow
def test_node_survives_the_gdcm_abort_of_a_corrupt_jpegls_run(tmp_path, tiny_model):
    """The real model pipeline on the run that crashed the node (GDCM, SIGABRT)."""
    state = tmp_path / "state"
    cfg = base_config(state, processing={"processor_factory": None, "model_folder": str(tiny_model),
                                         "inference": {"backend": "eager", "device": "cpu"}, "outputs": ["seg"]})
    with NodeProcess(write_config(tmp_path / "node.yaml", cfg)).start() as node:
        poison = make_xa(frames=3, size=64, seed=5)
        poison.compress(JPEGLSLossless)
        poison.Rows = 65  # the codestream says 64
        assert send(node.port, [poison]) == [0x0000]
        wait_until(lambda: journal_counts(state)["failed"] == 1, 180, "the corrupt run failed")
        assert node.proc.poll() is None and echo(node.port) == 0x0000
        assert send(node.port, [make_xa(seed=6)]) == [0x0000]
        wait_until(lambda: journal_counts(state)["done"] == 1, 180, "the next run processed")
        log = node.log()
        assert "killed by SIGABRT" in log and "recovered" not in log  # never restarted
        assert node.terminate() == 0


@pytest.mark.parametrize("isolated", [True, False])
def test_restarts_during_a_run_fail_it_only_where_the_run_could_be_the_cause(tmp_path, isolated):
    """Three restarts that found a run processing fail it when processing shares the node's process
    (the run may be what kills it); with processing isolated they are external and it is re-queued."""
    from dicom_node.config import load_node_config
    from dicom_node.journal import Journal, NewInstance
    from dicom_node.node import MAX_INTERRUPTIONS_IN_PROCESS, Node

    state = tmp_path / "state"
    processing = {"processor_factory": "testkit.fakes:threshold_processor"} if isolated else {}
    cfg = load_node_config(write_config(tmp_path / "node.yaml", base_config(state, processing=processing)))
    (cfg.spool_dir / "instances").mkdir(parents=True)
    ds = make_xa(seed=7)
    ds.save_as(cfg.spool_dir / "instances" / "run.dcm", enforce_file_format=True)
    journal = Journal(cfg.journal_path)
    row_id, _ = journal.record_received(NewInstance(
        file="run.dcm", sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), kind="image", calling_aet="ANGIO",
        size_bytes=(cfg.spool_dir / "instances" / "run.dcm").stat().st_size, frames=3))
    for _ in range(MAX_INTERRUPTIONS_IN_PROCESS):  # three lives of the node ended during this run
        journal.claim(row_id)
        journal.recover_interrupted(max_attempts=100)
    journal.claim(row_id)
    journal.close()
    node = Node(cfg, processors=None if isolated else [ThresholdProcessor(cfg.processing)])
    node.start()
    try:
        expected = "done" if isolated else "failed"
        wait_until(lambda: journal_counts(state).get(expected, 0) == 1, 60, f"the run {expected}")
        assert sum(journal_counts(state).values()) == 1
    finally:
        node.stop()
