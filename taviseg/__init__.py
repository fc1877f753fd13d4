"""taviseg: the command line and the demo, on top of every other package.

The work lives below: ``tavicore`` (configuration, errors, version, file and device helpers),
``tavidata`` (data-set format, splits, phantom), ``segmentation`` (models, inference, DICOM
I/O), ``dicom_node`` (the DICOM node) and ``training`` (train, tune, evaluate, report).
Nothing imports this package.
"""

from tavicore import __version__

__all__ = ["__version__"]
