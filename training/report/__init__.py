"""``taviseg report``: the paper's Tables 1-3, the model comparison and figures.

:mod:`~training.report.tables` (Markdown/CSV tables with the paper's figures beside ours),
:mod:`~training.report.figures` (PNG plots), :mod:`~training.report.flops` (parameters and
FLOPs) and :mod:`~training.report.build` (assembles ``report.md``).
"""
