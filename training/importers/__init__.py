"""Importers: bring annotated frames from other layouts into the project's data-set format.

One module per source layout, each with a frozen config dataclass and one ``import_*`` function
writing through :class:`tavidata.format.DatasetWriter`:

- :mod:`.release`: the authors' release (an images folder and a masks folder, matching names);
- :mod:`.supervisely`: a Supervisely project (``meta.json``, ``<dataset>/img``, ``<dataset>/ann``);
- :mod:`.dicom`: DICOM X-ray runs paired with DICOM Segmentation objects.
"""

from training.importers.dicom import DicomImportConfig, import_dicom
from training.importers.output import ImportResult
from training.importers.release import ReleaseImportConfig, import_release
from training.importers.supervisely import SuperviselyImportConfig, import_supervisely

__all__ = [
    "DicomImportConfig",
    "ImportResult",
    "ReleaseImportConfig",
    "SuperviselyImportConfig",
    "import_dicom",
    "import_release",
    "import_supervisely",
]
