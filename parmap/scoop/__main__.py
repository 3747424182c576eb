"""``python -m parmap.scoop [-n N] [--backend NAME] script.py [args...]``: see ``_launcher``."""

import sys

from parmap.scoop._launcher import main

if __name__ == "__main__":
    sys.exit(main())
