"""Peers and helpers shared by the demo, the test suite and the benchmarks.

:mod:`testkit.paths` (repository, free loopback ports, the real DICOM samples),
:mod:`testkit.node` (synthetic XA runs, node configurations, a node in its own process, a small
SCU), :mod:`testkit.fakes` (a fast stand-in processor for node runs), :mod:`testkit.orthanc` (a real
Orthanc PACS on free loopback ports). ``taviseg demo``, ``tests/`` and ``bench/`` import these;
nothing here imports ``taviseg``, ``tests`` or ``bench``.
"""
