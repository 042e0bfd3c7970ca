"""``python -m distill`` runs the command line."""

import sys

from distill.cli.main import main

sys.exit(main())
