"""Per-frame quality control of the aortic-root outlines (issue 17).

Modules, one concept each: :mod:`.shape` (shape of a mask in mm and fractions),
:mod:`.disagreement` (flip-TTA Dice, boundary entropy), :mod:`.contrast` (is the outlined
region darker than its surroundings), :mod:`.ood` (Mahalanobis distance of pooled encoder
features), :mod:`.temporal` (agreement with neighbouring frames), :mod:`.calibrator` (monotone
logistic calibration to P(Dice >= 0.8)), :mod:`.store` (``qc.json``/``qc.npz`` in the model
folder), :mod:`.assess` (the assessor: model + measurements + calibration + "no root here"
gate), :mod:`.verdict` (the run-level verdict), :mod:`.stress` (the stress set) and
:mod:`.fit` (fitting the QC data of a model folder). See docs/qc.md.
"""
