"""``python -m teachclip.cli ...`` (what ``torchrun -m teachclip.cli`` runs): the ``teach`` command."""

from teachclip.cli import app

app()
