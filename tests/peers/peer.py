"""Small network peers for the forwarder lab, on the standard library only.

  peer.py serve HOST PORT             TCP and UDP: answer "peer=<ip>:<port> at=<own ip> got=<data>"
  peer.py stream HOST PORT SIZE LOG   TCP: send SIZE deterministic bytes slowly,
                                      then write "<len> <sha256>" to LOG
  peer.py tcp HOST PORT MESSAGE       send, half-close, print the answer or RESET/REFUSED
  peer.py udp HOST PORT MESSAGE       print "from=<ip>:<port> <answer>" or TIMEOUT
  peer.py fetch HOST PORT             print "<len> <sha256>" of everything received
  peer.py slowaccept HOST PORT PAUSE  TCP as serve, but with a backlog of 128 and
                                      no accept for PAUSE seconds: SYNs beyond
                                      the backlog are dropped meanwhile
  peer.py misbehave HOST PORT HOW     TCP backends that misbehave: "reset" sends
                                      1000 bytes, then resets; "silent" accepts
                                      and never reads or answers
  peer.py lines HOST PORT             TCP: answer each line with "at=<own ip> <line>"
  peer.py outcome HOST PORT           send a line, read to the end: print
                                      "bytes=<n> end=eof|reset|timeout after=<s>"
  peer.py burst HOST PORT TOTAL BATCH TIMEOUT
                                      TOTAL connections, BATCH at once, each
                                      sending a message and reading the answer
                                      (TIMEOUT s): print "answered=<n>" and the
                                      other outcomes
  peer.py spread HOST PORT COUNT      TCP: COUNT connections one after another,
                                      each sending a line; print "<ip>=<n>"
                                      for each backend's at=, and failed=<n>
  peer.py flows HOST PORT FLOWS EACH  UDP: FLOWS sockets, each sending EACH
                                      datagrams; print "sticky=<n>" (flows
                                      answered by one backend only) and
                                      "<ip>=<n>" flows per backend
  peer.py flood HOST PORT COUNT RATE  UDP from COUNT spoofed sources (10.200.0.0
                                      upward, one datagram each, raw socket),
                                      RATE a second (0: as fast as possible)
"""
import collections
import hashlib
import socket
import struct
import sys
import threading
import time


def serve(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def udp():
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, port))
        while True:
            data, peer = s.recvfrom(65535)
            s.sendto(b"peer=%s:%d at=%s got=%s" % (peer[0].encode(), peer[1], host.encode(), data), peer)

    threading.Thread(target=udp, daemon=True).start()
    t = socket.socket(family, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((host, port))
    t.listen(128)
    while True:
        c, peer = t.accept()
        threading.Thread(target=answer, args=(c, peer), daemon=True).start()


def answer(c, peer):
    try:
        data = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        at = c.getsockname()[0].encode()
        c.sendall(b"peer=%s:%d at=%s got=%s" % (peer[0].encode(), peer[1], at, data))
    finally:
        c.close()


def stream(host, port, size, log):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((host, port))
    t.listen(16)
    while True:
        c, _ = t.accept()
        digest, sent, i = hashlib.sha256(), 0, 0
        # About three seconds of sending, so the test can act meanwhile.
        while sent < size:
            block = b"".join(hashlib.sha256(b"%d.%d" % (i, j)).digest() for j in range(512))
            block = block[: size - sent]
            c.sendall(block)
            digest.update(block)
            sent += len(block)
            i += 1
            time.sleep(3.0 * len(block) / size)
        c.close()
        with open(log, "a") as f:
            f.write("%d %s\n" % (sent, digest.hexdigest()))


def tcp(host, port, message):
    try:
        s = socket.create_connection((host, port), timeout=5)
        try:
            s.sendall(message.encode())
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, OSError) as e:
            # A server that answers without reading may already have closed.
            if isinstance(e, (ConnectionResetError, ConnectionRefusedError)):
                raise
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        # A PROXY v2 header echoed back is binary.
        print(out.decode(errors="replace") if out else "EMPTY")
    except ConnectionResetError:
        print("RESET")
    except ConnectionRefusedError:
        print("REFUSED")
    except socket.timeout:
        print("TIMEOUT")
    except OSError as e:
        # No route to host: nobody answered ARP for the address (yet).
        print("UNREACHABLE %s" % e.errno)


def udp(host, port, message):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.5)
    s.sendto(message.encode(), (host, port))
    try:
        data, peer = s.recvfrom(65535)
        print("from=%s:%d %s" % (peer[0], peer[1], data.decode()))
    except (socket.timeout, ConnectionRefusedError):
        print("TIMEOUT")


def fetch(host, port):
    s = socket.create_connection((host, port), timeout=10)
    s.shutdown(socket.SHUT_WR)
    digest, n = hashlib.sha256(), 0
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        digest.update(chunk)
        n += len(chunk)
    print("%d %s" % (n, digest.hexdigest()))


def slowaccept(host, port, pause):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((host, port))
    t.listen(128)
    time.sleep(pause)
    while True:
        c, peer = t.accept()
        threading.Thread(target=answer, args=(c, peer), daemon=True).start()


def misbehave(host, port, how):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((host, port))
    t.listen(128)
    held = []
    while True:
        c, _ = t.accept()
        if how == "reset":
            c.sendall(b"x" * 1000)
            time.sleep(0.3)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        else:
            held.append(c)


def lines(host, port):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((host, port))
    t.listen(128)

    def one(c):
        with c, c.makefile("rb") as f:
            for line in f:
                c.sendall(b"at=%s %s" % (host.encode(), line))

    while True:
        c, _ = t.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def outcome(host, port):
    s = socket.create_connection((host, port), timeout=5)
    s.settimeout(10)
    start, n, end = time.time(), 0, "eof"
    s.sendall(b"hello\n")
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            n += len(chunk)
    except ConnectionResetError:
        end = "reset"
    except socket.timeout:
        end = "timeout"
    print("bytes=%d end=%s after=%.1f" % (n, end, time.time() - start))


def burst(host, port, total, batch, timeout):
    out = collections.Counter()
    lock = threading.Lock()

    def one(i):
        try:
            s = socket.create_connection((host, port), timeout=timeout)
            data = send_and_read(s, b"burst%d" % i)
            how = "answered" if b"got=burst%d" % i in data else "empty"
        except ConnectionResetError:
            how = "reset"
        except Exception as e:
            how = type(e).__name__
        with lock:
            out[how] += 1

    for start in range(0, total, batch):
        ts = [threading.Thread(target=one, args=(i,)) for i in range(start, min(start + batch, total))]
        [t.start() for t in ts]
        [t.join() for t in ts]
    print(" ".join("%s=%d" % kv for kv in sorted(out.items())))


def send_and_read(s, message):
    """Sends message, half-closes, and returns everything received."""
    s.sendall(message)
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def backend_of(answer):
    for word in answer.split():
        if word.startswith(b"at="):
            return word[3:].decode()
    return None


def spread(host, port, count):
    seen = collections.Counter()
    for _ in range(count):
        try:
            c = socket.create_connection((host, port), timeout=5)
            data = send_and_read(c, b"spread\n")
            c.close()
            seen[backend_of(data) or "failed"] += 1
        except OSError:
            seen["failed"] += 1
    seen.setdefault("failed", 0)
    print(" ".join("%s=%d" % kv for kv in sorted(seen.items())))


def flows(host, port, count, each):
    per_backend = collections.Counter()
    sticky = 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.connect((host, port))
        answered = set()
        for i in range(each):
            s.send(b"flow %d" % i)
            try:
                answered.add(backend_of(s.recv(65535)))
            except OSError:
                answered.add(None)
        s.close()
        if len(answered) == 1 and None not in answered:
            sticky += 1
            per_backend[answered.pop()] += 1
    print("sticky=%d %s" % (sticky, " ".join("%s=%d" % kv for kv in sorted(per_backend.items()))))


def flood(host, port, count, rate):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    first = struct.unpack("!I", socket.inet_aton("10.200.0.0"))[0]
    dst = socket.inet_aton(host)
    payload = b"spoofed"
    start = time.time()
    for i in range(count):
        udp = struct.pack("!HHHH", 1024 + (i * 7919) % 60000, port, 8 + len(payload), 0) + payload
        # The kernel fills in the IP checksum; a zero UDP checksum means none.
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
            struct.pack("!I", first + i), dst,
        )
        s.sendto(ip + udp, (host, 0))
        if rate:
            ahead = start + (i + 1) / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
    print("sent %d in %.1fs" % (count, time.time() - start), flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "spread":
        spread(args[0], int(args[1]), int(args[2]))
    elif cmd == "flows":
        flows(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "serve":
        serve(args[0], int(args[1]))
    elif cmd == "stream":
        stream(args[0], int(args[1]), int(args[2]), args[3])
    elif cmd == "tcp":
        tcp(args[0], int(args[1]), args[2])
    elif cmd == "udp":
        udp(args[0], int(args[1]), args[2])
    elif cmd == "fetch":
        fetch(args[0], int(args[1]))
    elif cmd == "slowaccept":
        slowaccept(args[0], int(args[1]), float(args[2]))
    elif cmd == "misbehave":
        misbehave(args[0], int(args[1]), args[2])
    elif cmd == "lines":
        lines(args[0], int(args[1]))
    elif cmd == "outcome":
        outcome(args[0], int(args[1]))
    elif cmd == "burst":
        burst(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4]))
    elif cmd == "flood":
        flood(args[0], int(args[1]), int(args[2]), float(args[3]))
