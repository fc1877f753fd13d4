"""Offline training pipeline: dataset -> patient folds -> train -> tune -> evaluate -> report.

Also home of the synthetic TAVI angiography phantom (:mod:`tavidata.phantom`), the embedded
default data set.
"""

import os

# Albumentations asks PyPI for a newer version when it is imported (a network request, and a
# wait where there is no network); nothing in this project downloads at run time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
