"""The pipeline's stages, one module (or small package) per DVC stage in ``dvc.yaml``: plain functions
that the ``teach`` CLI calls, orchestrating the stores, models and training utilities below them.
No stage imports another stage (checked by the import contracts in ``.importlinter``)."""
