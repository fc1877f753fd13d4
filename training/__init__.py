"""Offline training pipeline: dataset -> patient folds -> train -> tune -> evaluate -> report.

Also home of the synthetic TAVI angiography phantom (:mod:`training.phantom`), the embedded
default data set.
"""
