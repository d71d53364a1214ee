"""Another Redis client in its own process (no GIL or event loop shared with the test):
PINGs every ``interval`` seconds until stdin closes, then prints one JSON list of
``[due, latency]`` pairs (``time.monotonic``, the same clock in every process on Linux).

Latency counts from when the PING was due, not from when it was sent: a PING held up
behind a long Lua script, and the ones due meanwhile, are measured in full (no
coordinated omission). Only Redis's delays are counted so: when this process itself
wakes up late from its sleep (descheduled on a busy machine), its schedule restarts
from the moment it woke.

Usage: ``python -m tests.redis_ping_probe REDIS_URL INTERVAL_SECONDS``; prints ``ready``
once connected.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import redis


def main() -> None:
    url, interval = sys.argv[1], float(sys.argv[2])
    client = redis.Redis.from_url(url, socket_timeout=30)
    client.ping()
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    print("ready", flush=True)
    samples: list[tuple[float, float]] = []
    due = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
            due = time.monotonic()
        client.ping()
        samples.append((due, time.monotonic() - due))
        due += interval
    client.close()
    print(json.dumps(samples), flush=True)


if __name__ == "__main__":
    main()
