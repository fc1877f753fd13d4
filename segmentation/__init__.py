"""Segmentation core: frames -> tensor -> model -> mask -> metrics (mm) -> DICOM output."""
