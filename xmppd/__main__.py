"""`python -m xmppd` runs the command line."""

import sys

from xmppd.cli import main

sys.exit(main())
