"""Imported by where.py and by name on the workers (not shipped by value)."""

import os
import time


def host_of(item, delay=0.0):
    """The address of the SSH server this worker process was started through."""
    time.sleep(delay)
    connection = os.environ.get("SSH_CONNECTION")
    host = connection.split()[2] if connection else "here"
    if item == 0:
        print(f"item 0 printed this on {host}", flush=True)
    return host
