#!/usr/bin/env python3
"""A client polling a service: every 100 ms it sends a numbered datagram to
ADDRESS:PORT and waits up to 100 ms for its echo. When STOPFILE appears it
prints one JSON line: probes sent, answered, the numbers of those lost, and
the longest run of consecutive losses in milliseconds.

usage: udp_poller.py ADDRESS PORT STOPFILE
"""
import json
import os
import select
import socket
import sys
import time

INTERVAL = 0.1


def main():
    address, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((address, port))
    sent, answered, lost = 0, 0, []
    run, longest = 0, 0
    while not os.path.exists(stop):
        started = time.monotonic()
        sent += 1
        probe = str(sent).encode()
        try:
            sock.send(probe)
        except OSError:
            pass  # no neighbour yet: counts as lost
        got = False
        while not got:
            left = started + INTERVAL - time.monotonic()
            if left <= 0:
                break
            readable, _, _ = select.select([sock], [], [], left)
            if readable:
                try:
                    got = sock.recv(64) == probe
                except OSError:
                    pass  # an ICMP error for an earlier probe
        if got:
            answered += 1
            run = 0
        else:
            lost.append(sent)
            run += 1
            longest = max(longest, run)
        time.sleep(max(0.0, started + INTERVAL - time.monotonic()))
    print(json.dumps({"sent": sent, "answered": answered, "lost": lost,
                      "longest_gap_ms": int(longest * INTERVAL * 1000)}), flush=True)


if __name__ == "__main__":
    main()
