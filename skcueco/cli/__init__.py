"""Command-line programs: the main job (``python -m skcueco``) and the trainer
that ``torchrun`` launches (``python -m skcueco.train``)."""
