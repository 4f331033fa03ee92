"""`python -m gaussianvision.apps.cli COMMAND ...`: the gsv command (apps/cli/main.py)."""
from gaussianvision.apps.cli.main import run

run()
