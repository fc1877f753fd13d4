"""The v2 phantom: digitally reconstructed radiographs of a real chest CT, with X-ray physics,
devices placed in 3D and domain randomisation (``generator: ct`` in ``conf/phantom.yaml``).

One concept per module: the CT and its checks (:mod:`.volume`), the aortic root region
(:mod:`.root`), the C-arm's cone-beam geometry (:mod:`.geometry`), the torch projector
(:mod:`.projector`), attenuation and the image chain (:mod:`.physics`), devices in 3D
(:mod:`.devices3d`), every random choice of a run (:mod:`.randomise`) and the run itself
(:mod:`.run`). :func:`tavidata.phantom.generate_run` and :func:`~tavidata.phantom.generate_cohort`
call it when ``config.generator == "ct"``; the outputs are those of v1. See docs/phantom_ct.md.
"""

from tavidata.phantom.ct.geometry import CArmGeometry
from tavidata.phantom.ct.run import generate_ct_run
from tavidata.phantom.ct.volume import CTDataMissingError, default_ct_dir, load_ct

__all__ = ["CArmGeometry", "CTDataMissingError", "default_ct_dir", "generate_ct_run", "load_ct"]
