#!/usr/bin/env python3
"""A TCP relay between a BGP speaker and a router that, once the session
is up, slips one UPDATE with a malformed attribute into what the router
sends, at a message boundary: how a router holding a route with a broken
attribute (or one that builds it wrongly) looks from the speaker.

usage: bgp_injector.py LISTEN_ADDR LISTEN_PORT ROUTER_ADDR ROUTER_PORT HEX_UPDATE

It prints "injected" when it has sent the message.
"""
import socket
import sys
import threading

MARKER = b"\xff" * 16


def pipe(src, dst, inject=None):
    buf = b""
    keepalives = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            buf += data
            while len(buf) >= 19:
                length = int.from_bytes(buf[16:18], "big")
                if len(buf) < length:
                    break
                message, buf = buf[:length], buf[length:]
                dst.sendall(message)
                if inject is not None and message[18] == 4:
                    keepalives += 1
                    # The second KEEPALIVE comes once the session is
                    # Established on both sides.
                    if keepalives == 2:
                        dst.sendall(inject)
                        print("injected", flush=True)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    listen_addr, listen_port, router_addr, router_port, update = sys.argv[1:6]
    inject = bytes.fromhex(update)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((listen_addr, int(listen_port)))
    server.listen(4)
    print("listening", flush=True)
    while True:
        speaker, _ = server.accept()
        router = socket.create_connection((router_addr, int(router_port)))
        threading.Thread(target=pipe, args=(speaker, router), daemon=True).start()
        threading.Thread(target=pipe, args=(router, speaker, inject), daemon=True).start()


if __name__ == "__main__":
    main()
