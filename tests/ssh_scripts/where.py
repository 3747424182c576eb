"""Where did the work run? A SCOOP program for the SSH host tests.

Prints the worker count, then how many items ran on each host, by the server
address of the SSH session each worker process was started through
(``$SSH_CONNECTION``), or ``here`` for a worker that was not. The mapped
function lives in a module beside this script, imported by name on the
workers: the hosts find it because the launcher puts the script's folder on
their path.
"""

import sys
from collections import Counter

import scoop
from _where_helper import host_of
from scoop import futures

if __name__ == "__main__":
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    print("SIZE", scoop.SIZE)
    print("HOSTS", dict(sorted(Counter(futures.map(host_of, range(items), delay=0.05)).items())))
