"""`python -m hsmlb.emulator`: the same as `hsmlb apc-emulator`."""

import sys

from hsmlb.emulator.cli import main

sys.exit(main())
