"""``python3 -m layerwatch``: the same command as the installed ``layerwatch`` script."""

import sys

from layerwatch.cli import main

if __name__ == "__main__":  # importing the package's modules one by one (the image build) runs nothing
    sys.exit(main())
