"""The SCP's early write-back of data sets being received (dicom_node.scp.EarlyWriteback)."""

from __future__ import annotations

import os
from types import SimpleNamespace

from dicom_node.scp import EarlyWriteback


def test_write_back_syncs_files_that_grew_by_a_step_and_forgets_gone_ones(tmp_path, monkeypatch):
    synced: list[int] = []
    real = getattr(os, "fdatasync", os.fsync)
    monkeypatch.setattr(os, "fdatasync" if hasattr(os, "fdatasync") else "fsync",
                        lambda fd: (synced.append(fd), real(fd))[1])
    wb = EarlyWriteback(tmp_path, step_bytes=1000)
    big, small = tmp_path / "big.dcm", tmp_path / "small.dcm"
    big.write_bytes(b"x" * 1500)
    small.write_bytes(b"x" * 10)
    assert wb.write_back() == 1  # only the file with a step's worth of new data
    big.write_bytes(b"x" * 2000)
    assert wb.write_back() == 0  # 500 new bytes: less than a step since the last pass
    big.write_bytes(b"x" * 2600)
    assert wb.write_back() == 1
    big.unlink()
    assert wb.write_back() == 0 and wb._synced == {}  # a file renamed into the spool is forgotten
    assert len(synced) == 2


def test_write_back_of_a_missing_folder_is_harmless(tmp_path):
    assert EarlyWriteback(tmp_path / "missing").write_back() == 0


def test_received_bytes_wake_the_thread_every_step(tmp_path):
    wb = EarlyWriteback(tmp_path, step_bytes=100)
    wb.on_data(SimpleNamespace(data=b"x" * 60))
    assert not wb._wake.is_set()
    wb.on_data(SimpleNamespace(data=b"x" * 60))
    assert wb._wake.is_set() and wb._received == 0


def test_start_and_stop(tmp_path):
    wb = EarlyWriteback(tmp_path, step_bytes=1)
    (tmp_path / "f.dcm").write_bytes(b"abc")
    wb.start()
    wb.on_data(SimpleNamespace(data=b"abc"))
    wb.stop(timeout=5)
    assert not wb._thread.is_alive()
