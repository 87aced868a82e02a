"""`python -m dda`: the `dda` command without the console script."""

import sys

from dda.cli import main

sys.exit(main())
