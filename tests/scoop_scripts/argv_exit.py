"""sys.argv reaches the script; sys.exit(n) is the exit code, as with python script.py.
# real-scoop: skip - SCOOP 0.7 prints a SystemExit traceback to stdout and exits 0
"""

import sys

from scoop import futures

if __name__ == "__main__":
    print("args", sys.argv[1:])
    print("lengths", list(futures.map(len, sys.argv[1:])))
    sys.stdout.flush()
    sys.exit(int(sys.argv[1]) if sys.argv[1:] and sys.argv[1].isdigit() else 0)
