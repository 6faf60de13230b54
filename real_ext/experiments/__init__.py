"""Experiments as users run them: typed YAML configs, the runner (checkpoints,
resume, logs, timeline), pipelines of stages and the ``real-ext`` command."""
