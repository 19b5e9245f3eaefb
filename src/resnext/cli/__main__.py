"""`python -m resnext.cli` (what torchrun runs) is the `resnext` command."""

import sys

from resnext.cli import main

sys.exit(main())
