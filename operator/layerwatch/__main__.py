"""``python3 -m layerwatch``: the same command as the installed ``layerwatch`` script."""

import sys

from layerwatch.cli import main

sys.exit(main())
