"""DICOM in and out for projection X-ray (angiography / fluoroscopy).

Reading (one module per concept):
    sop_classes  what an object is: routing on SOP Class and Modality (:func:`classify`)
    decode       one encoded frame -> stored values, with the fastest decoder and fallbacks
    calibration  which pixel spacing applies, and where it came from (:class:`Calibration`)
    reader       a file or dataset -> :class:`ProjectionRun`, frames one at a time

Writing:
    header       sanitised header copies shared by every writer (patient/study, PatientSex...)
    seg          DICOM Segmentation (highdicom, with the proxy-source workaround for XA/XRF)
    sr           TID 1500 measurement report: per-frame root area, calibration, confidence
    overlay      Grayscale Softcopy Presentation State outline, or burned-in Secondary Capture

See docs/dicom.md for the conformance-style notes. Modules import heavy libraries
(highdicom) lazily where they can, so importing this package stays cheap.
"""
