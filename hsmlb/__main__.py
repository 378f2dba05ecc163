import sys

from hsmlb.cli import main

sys.exit(main())
