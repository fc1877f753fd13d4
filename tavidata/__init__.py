"""tavidata: the data layer, below segmentation and training.

The on-disk data-set format (:mod:`tavidata.format`), its checker (:mod:`tavidata.check`) and
summary (:mod:`tavidata.info`), patient-level splits (:mod:`tavidata.splits`), the synthetic TAVI
phantom (:mod:`tavidata.phantom`) and the one builder of synthetic X-ray DICOM runs
(:mod:`tavidata.xa`). It imports only :mod:`tavicore`, so prediction, the demo and the benches
read data sets without importing training.
"""
