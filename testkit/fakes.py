"""A fast stand-in processor for node tests: threshold masks in a minimal Secondary Capture.

Selected in a node's configuration with ``processing.processor_factory:
testkit.fakes:threshold_processor``. It decodes with pydicom, thresholds every frame at its
mean and returns one ``seg`` output (a Secondary Capture holding the mask of frame 1) with the
node's deterministic output UIDs. ``TAVISEG_TEST_PROCESS_DELAY_S`` slows each run down (for
kill-while-processing tests).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicom_node.config import ProcessingConfig
from dicom_node.errors import ProcessingError
from dicom_node.pipeline import OutputObject, assign_output_uids
from dicom_node.spool import StoredInstance


class ThresholdProcessor:
    name = "threshold-test"
    version = "test-1"

    def __init__(self, cfg: ProcessingConfig) -> None:
        self.cfg = cfg
        self.delay_s = float(os.environ.get("TAVISEG_TEST_PROCESS_DELAY_S", "0") or 0)

    def process(self, instance: StoredInstance) -> list[OutputObject]:
        if self.delay_s:
            time.sleep(self.delay_s)
        src = pydicom.dcmread(instance.path)
        try:
            pixels = src.pixel_array
        except Exception as exc:  # any decoder failure is a processing failure here
            raise ProcessingError(f"cannot decode {instance.sop_instance_uid}: {exc}") from exc
        frame = pixels if pixels.ndim == 2 else pixels[0]
        if frame.ndim != 2:
            raise ProcessingError("not a grayscale image")
        mask = (frame < frame.mean()).astype(np.uint8)
        out = pydicom.Dataset()
        out.file_meta = FileMetaDataset()
        out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.SOPClassUID = SecondaryCaptureImageStorage
        for kw in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyID", "AccessionNumber"):
            if kw in src:
                setattr(out, kw, src.data_element(kw).value)
        out.Modality = "OT"
        out.ConversionType = "WSD"
        out.SeriesNumber = self.cfg.series_number
        out.InstanceNumber = 1
        out.SeriesDescription = "threshold test output"
        out.Rows, out.Columns = mask.shape
        out.SamplesPerPixel, out.PhotometricInterpretation = 1, "MONOCHROME2"
        out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = 8, 8, 7, 0
        out.PixelData = (mask * 255).tobytes()
        assign_output_uids(out, source=src, kind="seg", model_version=self.version, uid_root=self.cfg.uid_root)
        return [OutputObject("seg", out)]


def threshold_processor(cfg: ProcessingConfig) -> ThresholdProcessor:
    """Factory named by ``processing.processor_factory``."""
    return ThresholdProcessor(cfg)
