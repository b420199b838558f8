"""`python -m vaelab` is the `vaelab` command."""

import sys

from vaelab.cli import main

sys.exit(main())
