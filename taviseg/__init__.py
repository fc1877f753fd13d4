"""taviseg: DICOM-native aortic-root segmentation for TAVI angiography.

This small package holds what the three pipeline packages share: the configuration loader
(:mod:`taviseg.config`), the root of the domain-error hierarchy (:mod:`taviseg.errors`) and the
``taviseg`` command line (:mod:`taviseg.cli`, one module per sub-command in
:mod:`taviseg.commands`). The work itself lives in ``segmentation``, ``training`` and
``dicom_node``.
"""

__version__ = "0.1.0"
