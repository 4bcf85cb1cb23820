"""Training package: ``python -m train`` (see ``train/cli.py``)."""
