"""``python -m parmap.bench``: the same as ``parmap bench``."""

import sys

from parmap.bench import main

if __name__ == "__main__":
    sys.exit(main())
