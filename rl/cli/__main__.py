"""``python -m rl.cli COMMAND ...``: what ``accelerate launch -m rl.cli train RECIPE`` runs on every rank."""

import sys

from rl.cli.app import console

sys.exit(console())
