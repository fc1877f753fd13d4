"""The default YAML configuration of taviseg, installed with the code as package data.

Holds no code: :data:`tavicore.config.CONF_DIR` finds these files through
:mod:`importlib.resources`, so a non-editable ``pip install .`` keeps every default.
"""
