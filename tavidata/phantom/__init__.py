"""Synthetic TAVI aortography phantom: cine runs of a contrast-filled aortic root with its mask.

Anatomy (:mod:`.anatomy`), devices (:mod:`.devices`), thorax background (:mod:`.background`),
per-run random settings (:mod:`.case`), image formation (:mod:`.imaging`), runs and cohorts
(:mod:`.cohort`), contact sheets (:mod:`.contact_sheet`) and DICOM XA export
(:mod:`.dicom_export`). Presets live in ``conf/phantom.yaml``.
"""

from tavidata.phantom.cohort import (
    PhantomRun,
    generate_cohort,
    generate_run,
    patient_seed,
)
from tavidata.phantom.config import PhantomConfig, load_phantom_preset
from tavidata.phantom.contact_sheet import make_contact_sheet

__all__ = [
    "PhantomConfig",
    "PhantomRun",
    "generate_cohort",
    "generate_run",
    "load_phantom_preset",
    "make_contact_sheet",
    "patient_seed",
]
