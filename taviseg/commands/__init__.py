"""One module per ``taviseg`` sub-command: ``HELP``, ``add_arguments(parser)``, ``run(args)``.

Command modules are thin: they parse arguments, load configuration with
:func:`tavicore.config.load_config` and call importable functions of ``segmentation``,
``training`` or ``dicom_node``.
"""
