"""`python -m resnext` is the `resnext` command."""

import sys

from resnext.cli import main

sys.exit(main())
