"""tavicore: the ground floor every other package of taviseg stands on.

Configuration loading (:mod:`tavicore.config`), the root of the domain errors
(:mod:`tavicore.errors`), the version, durable atomic writes (:mod:`tavicore.fileio`),
the choice of device (:mod:`tavicore.device`) and UID generation (:mod:`tavicore.uids`).
It imports no other package of this project (tests/test_layering.py checks it).
"""

__version__ = "0.2.0"
