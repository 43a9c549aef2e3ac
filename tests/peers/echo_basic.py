"""Stand-in for the Gateway API conformance backend "echo-basic" and for the
conformance test clients (as of upstream v1.6.1), on the standard library only.

  echo_basic.py serve HOST --namespace NS --service SVC --pod POD
                [--tcp PORT]... [--tls PORT --cert F --key F]...
                [--udp PORT]... [--https PORT --cert F --key F]...
                                    run the echo servers, each in threads,
                                    until killed. TCP/TLS: greet with
                                    "Gateway API Test TCP Server", then answer
                                    PING, IS_TLS and TEST lines. UDP: answer
                                    each datagram with a JSON echo. HTTPS: answer
                                    any request with the JSON request echo.
                                    A --cert/--key pair binds to the --tls or
                                    --https just before it; a listener with no
                                    pair of its own uses the first pair given.
                                    Prints nothing on stdout; errors go to stderr
  echo_basic.py tcp-expect HOST PORT --namespace NS --backend B [--timeout 30]
                [--tls --ca F --sni NAME]
                                    retry once a second until one exchange
                                    (greeting, PING, IS_TLS, TEST) completes,
                                    then check it: print "ok pod=<pod>" and exit
                                    0, or print what differed and exit 1
  echo_basic.py tcp-once HOST PORT [--timeout 5]
                                    greeting and TEST once: print the pod, or
                                    "error: ..." and exit 1
  echo_basic.py udp-expect HOST PORT [--service S] [--namespace NS] [--timeout 30]
                                    every second, send the echo probe from a new
                                    socket and wait 2 s: print "ok ..." on the
                                    first (matching) answer, else exit 1 with
                                    the last answer or error
  echo_basic.py udp-any HOST PORT [--timeout 30]
                                    as udp-expect, but send a DNS query (A
                                    foo.bar.com) and accept any answer
  echo_basic.py weighted tcp|udp HOST PORT [--requests 500] [--concurrency 10]
                                    one connection or socket per request, asking
                                    for the pod: print "<backend>=<n>" per
                                    backend (pod without its last two "-" parts),
                                    sorted, then "errors=<n>"
  echo_basic.py tls-rejected HOST PORT --sni NAME [--timeout 30]
                                    every second, a TLS handshake (unverified):
                                    pass with "rejected: <how>" when it ends in
                                    EOF or a reset; an alert, a refusal or a
                                    completed handshake retry; after the timeout
                                    print the last outcome and exit 1
  echo_basic.py https-expect HOST PORT --sni NAME --host HOSTHEADER --ca F
                --namespace NS --backend B [--timeout 30]
                                    GET / over verified TLS until three answers
                                    in a row match (200, host, path, method,
                                    namespace, pod prefix): print "ok pod=<pod>",
                                    else exit 1 with the last reason
"""
import argparse
import collections
import http.client
import json
import random
import socket
import ssl
import struct
import sys
import threading
import time

GREETING = "Gateway API Test TCP Server"
UDP_PROBE = b"gateway-api-conformance-udp-echo"
UDP_WEIGHT_PROBE = b"gateway-api-conformance-udp-weight\n"
MAX_LINE = 65536


def log(message):
    print(message, file=sys.stderr, flush=True)


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def backend_of(pod):
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) >= 3 else pod


class Lines:
    """Line reader over a plain or TLS socket; lines come without \\n or \\r."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def read(self):
        """The next line as bytes, or None at the end of the stream."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
            if len(self.buf) > MAX_LINE and b"\n" not in self.buf:
                self.buf = b""  # garbage without a line end: drop it
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")


# ---------------------------------------------------------------- servers


def listen(host, port, kind):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    if kind == socket.SOCK_STREAM:
        s.listen(128)
    return s


def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def remember(sslsock, name, _ctx):
        sslsock.sni_name = name or ""

    ctx.sni_callback = remember
    return ctx


def accept_loop(listener, handle):
    while True:
        try:
            c, _ = listener.accept()
        except OSError as e:
            # Out of descriptors or the like: back off, never die.
            log("accept: %s" % e)
            time.sleep(0.1)
            continue
        threading.Thread(target=guarded, args=(handle, c), daemon=True).start()


def guarded(handle, c):
    try:
        handle(c)
    except Exception:
        pass  # resets, handshake failures, garbage: only this client is gone
    finally:
        try:
            c.close()
        except OSError:
            pass


def tls_handshake(c, ctx):
    c.settimeout(30)
    s = ctx.wrap_socket(c, server_side=True, do_handshake_on_connect=False)
    s.sni_name = ""
    s.do_handshake()
    s.settimeout(None)
    return s


def tcp_echo(ident, ctx):
    def handle(c):
        s = tls_handshake(c, ctx) if ctx else c
        try:
            s.sendall((GREETING + "\n").encode())
            lines = Lines(s)
            while True:
                line = lines.read()
                if line is None:
                    return
                if line == b"PING":
                    s.sendall(b"PONG\n")
                elif line == b"IS_TLS":
                    s.sendall(b"true\n" if ctx else b"false\n")
                elif line == b"TEST":
                    info = dict(ident, tcpport="3000", tlsport="8443", isTLS=bool(ctx))
                    if ctx:
                        info["tls"] = {
                            "version": s.version() or "",
                            "serverName": s.sni_name,
                            "cipherSuite": (s.cipher() or ("",))[0],
                        }
                    s.sendall((compact(info) + "\n").encode())
        finally:
            if s is not c:
                s.close()

    return handle


def udp_echo(sock, ident):
    while True:
        try:
            data, peer = sock.recvfrom(1024)
            reply = {"request": data.decode("utf-8", errors="replace")}
            reply.update(ident)
            sock.sendto(compact(reply).encode(), peer)
        except OSError as e:
            # ICMP errors from earlier replies surface here; keep serving.
            if not isinstance(e, ConnectionRefusedError):
                log("udp: %s" % e)
                time.sleep(0.01)


def canonical(name):
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


def https_echo(ident, ctx):
    def handle(c):
        s = tls_handshake(c, ctx)
        try:
            s.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(65536)
                if not chunk:
                    return
                head += chunk
                if len(head) > MAX_LINE:
                    break
            text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            request_line, *header_lines = text.split("\r\n")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                respond(s, 400, "text/plain", b"bad request\n")
                return
            method, target, proto = parts
            host, headers = "", {}
            for h in header_lines:
                if ":" not in h:
                    continue
                name, value = h.split(":", 1)
                name, value = canonical(name.strip()), value.strip()
                if name == "Host":
                    host = value
                else:
                    headers.setdefault(name, []).append(value)
            info = {"path": target, "host": host, "method": method, "proto": proto, "headers": headers}
            info.update(ident)
            info["tls"] = {
                "version": s.version() or "",
                "serverName": s.sni_name,
                "cipherSuite": (s.cipher() or ("",))[0],
            }
            respond(s, 200, "application/json", compact(info).encode())
        finally:
            s.close()

    return handle


def respond(s, status, content_type, body):
    reason = http.client.responses.get(status, "")
    head = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
        status, reason, content_type, len(body))
    s.sendall(head.encode() + body)


class Listener(argparse.Action):
    """--tls PORT / --https PORT: a listener that a following --cert/--key binds to."""

    def __call__(self, parser, ns, value, option_string=None):
        if getattr(ns, "secure", None) is None:
            ns.secure = []
        ns.secure.append({"kind": self.dest, "port": value, "cert": None, "key": None})


class Credential(argparse.Action):
    """--cert F / --key F: for the latest listener if it has none yet."""

    def __call__(self, parser, ns, value, option_string=None):
        if getattr(ns, "creds", None) is None:
            ns.creds = {"cert": [], "key": []}
        ns.creds[self.dest].append(value)
        secure = getattr(ns, "secure", None) or []
        if secure and secure[-1][self.dest] is None:
            secure[-1][self.dest] = value


def serve(args):
    ident = {"namespace": args.namespace, "ingress": "", "service": args.service, "pod": args.pod}
    creds = args.creds or {"cert": [], "key": []}
    work = []
    try:
        for port in args.tcp or []:
            work.append((accept_loop, listen(args.host, port, socket.SOCK_STREAM), tcp_echo(ident, None)))
        for entry in args.secure or []:
            cert = entry["cert"] or (creds["cert"] or [None])[0]
            key = entry["key"] or (creds["key"] or [None])[0]
            if not cert or not key:
                log("--%s %d needs --cert and --key" % (entry["kind"], entry["port"]))
                sys.exit(2)
            ctx = server_context(cert, key)
            handler = tcp_echo(ident, ctx) if entry["kind"] == "tls" else https_echo(ident, ctx)
            work.append((accept_loop, listen(args.host, entry["port"], socket.SOCK_STREAM), handler))
        for port in args.udp or []:
            work.append((udp_echo, listen(args.host, port, socket.SOCK_DGRAM), ident))
    except (OSError, ssl.SSLError) as e:
        log("serve: %s" % e)
        sys.exit(1)
    if not work:
        log("serve: nothing to serve")
        sys.exit(2)
    for target, sock, extra in work:
        threading.Thread(target=target, args=(sock, extra), daemon=True).start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------- clients


def client_context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    # A trusted certificate need not be a CA's: upstream's HTTPS check trusts
    # the backend's own certificate, as Go's verifier allows.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def connect(host, port, timeout, ctx=None, sni=None):
    c = socket.create_connection((host, port), timeout=timeout)
    c.settimeout(timeout)
    if ctx is None:
        return c
    try:
        return ctx.wrap_socket(c, server_hostname=sni)
    except BaseException:
        c.close()
        raise


def expect_line(lines, what):
    line = lines.read()
    if line is None:
        raise EOFError("connection closed before %s" % what)
    return line.decode("utf-8", errors="replace")


def tcp_expect(args):
    if args.tls and not (args.ca and args.sni):
        sys.exit("tcp-expect: --tls needs --ca and --sni")
    ctx = client_context(args.ca) if args.tls else None
    deadline = time.monotonic() + args.timeout
    last = "no attempt"
    while True:
        try:
            with connect(args.host, args.port, 5, ctx, args.sni) as s:
                lines = Lines(s)
                greeting = expect_line(lines, "the greeting")
                s.sendall(b"PING\n")
                pong = expect_line(lines, "PONG")
                s.sendall(b"IS_TLS\n")
                is_tls = expect_line(lines, "the IS_TLS answer")
                s.sendall(b"TEST\n")
                info = json.loads(expect_line(lines, "the TEST answer"))
                if not isinstance(info, dict):
                    raise ValueError("TEST answer is not a JSON object")
            break
        except (OSError, ValueError, EOFError) as e:
            last = "%s: %s" % (type(e).__name__, e)
            if time.monotonic() + 1 >= deadline:
                print("failed after %ss: %s" % (args.timeout, last))
                sys.exit(1)
            time.sleep(1)
    pod = str(info.get("pod", ""))
    wrong = []
    if greeting != GREETING:
        wrong.append("greeting=%r want %r" % (greeting, GREETING))
    if pong != "PONG":
        wrong.append("ping answer=%r want 'PONG'" % pong)
    want_tls = "true" if args.tls else "false"
    if is_tls != want_tls:
        wrong.append("IS_TLS=%r want %r" % (is_tls, want_tls))
    if info.get("namespace") != args.namespace:
        wrong.append("namespace=%r want %r" % (info.get("namespace"), args.namespace))
    if not pod.startswith(args.backend + "-"):
        wrong.append("pod=%r want prefix %r" % (pod, args.backend + "-"))
    if args.tls:
        name = (info.get("tls") or {}).get("serverName")
        if name != args.sni:
            wrong.append("tls.serverName=%r want %r" % (name, args.sni))
    if wrong:
        print("mismatch: " + "; ".join(wrong))
        sys.exit(1)
    print("ok pod=%s" % pod)


def tcp_once(args):
    try:
        with connect(args.host, args.port, args.timeout) as s:
            lines = Lines(s)
            expect_line(lines, "the greeting")
            s.sendall(b"TEST\n")
            info = json.loads(expect_line(lines, "the TEST answer"))
            print(info["pod"])
    except (OSError, ValueError, EOFError, KeyError, TypeError) as e:
        print("error: %s: %s" % (type(e).__name__, e))
        sys.exit(1)


def udp_exchange(host, port, payload, wait):
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.connect(addr)
        s.settimeout(wait)
        s.send(payload)
        return s.recv(65535)


def dns_query(name="foo.bar.com"):
    header = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    return header + qname + struct.pack("!HH", 1, 1)  # type A, class IN


def udp_poll(args, payload, check):
    deadline = time.monotonic() + args.timeout
    last = "no attempt"
    while True:
        started = time.monotonic()
        try:
            reply = udp_exchange(args.host, args.port, payload, 2)
            verdict = check(reply)
            if verdict.startswith("ok"):
                print(verdict)
                return
            last = verdict
        except (OSError, ValueError) as e:
            last = "%s: %s" % (type(e).__name__, e)
        if time.monotonic() >= deadline:
            print("failed after %ss: %s" % (args.timeout, last))
            sys.exit(1)
        time.sleep(max(0.0, 1 - (time.monotonic() - started)))


def udp_expect(args):
    def check(reply):
        text = reply.decode("utf-8", errors="replace")
        if args.service is None and args.namespace is None:
            return "ok reply=%s" % text
        info = json.loads(text)
        if not isinstance(info, dict):
            return "reply is not a JSON object: %s" % text
        wrong = []
        if args.service is not None and info.get("service") != args.service:
            wrong.append("service=%r want %r" % (info.get("service"), args.service))
        if args.namespace is not None and info.get("namespace") != args.namespace:
            wrong.append("namespace=%r want %r" % (info.get("namespace"), args.namespace))
        if wrong:
            return "mismatch: %s (reply %s)" % ("; ".join(wrong), text)
        return "ok service=%s namespace=%s pod=%s" % (info.get("service"), info.get("namespace"), info.get("pod"))

    udp_poll(args, UDP_PROBE, check)


def udp_any(args):
    udp_poll(args, dns_query(), lambda reply: "ok bytes=%d" % len(reply))


def weighted(args):
    counts, errors = collections.Counter(), [0]
    lock = threading.Lock()
    todo = iter(range(args.requests))

    def one():
        if args.proto == "tcp":
            with connect(args.host, args.port, 5) as s:
                lines = Lines(s)
                expect_line(lines, "the greeting")
                s.sendall(b"TEST\n")
                info = json.loads(expect_line(lines, "the TEST answer"))
        else:
            info = json.loads(udp_exchange(args.host, args.port, UDP_WEIGHT_PROBE, 2).decode("utf-8", errors="replace"))
        return backend_of(str(info["pod"]))

    def worker():
        while True:
            with lock:
                if next(todo, None) is None:
                    return
            try:
                backend = one()
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                counts[backend] += 1

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for backend in sorted(counts):
        print("%s=%d" % (backend, counts[backend]))
    print("errors=%d" % errors[0])


def tls_rejected(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + args.timeout
    last = "no attempt"
    while True:
        started = time.monotonic()
        rejected, last = handshake_outcome(ctx, args)
        if rejected:
            print("rejected: %s" % last)
            return
        if time.monotonic() >= deadline:
            print("not rejected after %ss: %s" % (args.timeout, last))
            sys.exit(1)
        time.sleep(max(0.0, 1 - (time.monotonic() - started)))


def handshake_outcome(ctx, args):
    """(rejected?, how) for one connection and handshake."""
    try:
        c = socket.create_connection((args.host, args.port), timeout=5)
    except ConnectionRefusedError:
        return False, "refused"
    except OSError as e:
        return False, "connect: %s" % e
    try:
        c.settimeout(5)
        s = ctx.wrap_socket(c, server_hostname=args.sni, do_handshake_on_connect=False)
        s.do_handshake()
        version = s.version()
        s.close()
        return False, "handshake completed (%s)" % version
    except ssl.SSLZeroReturnError:
        # close_notify during the handshake: Go's TLS client reports io.EOF.
        return True, "eof (close_notify)"
    except ssl.SSLEOFError as e:
        return True, "unexpected eof (%s)" % (e.reason or e)
    except ssl.SSLSyscallError as e:
        return True, "eof (%s)" % e
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if "ALERT" in reason or "UNRECOGNIZED_NAME" in reason:
            return False, "alert: %s" % reason
        return False, "tls error: %s" % reason
    except (ConnectionResetError, BrokenPipeError) as e:
        return True, "connection reset (%s)" % type(e).__name__
    except socket.timeout:
        return False, "timeout"
    except OSError as e:
        if e.errno in (0, None):
            return True, "eof (%s)" % e
        return False, "error: %s" % e
    finally:
        c.close()


def https_expect(args):
    ctx = client_context(args.ca)
    deadline = time.monotonic() + args.timeout
    last, streak, pod = "no attempt", 0, ""
    request = ("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: echo_basic.py\r\nAccept: */*\r\n"
               "Connection: close\r\n\r\n" % args.host_header).encode()
    while True:
        reason = None
        try:
            with connect(args.host, args.port, 5, ctx, args.sni) as s:
                s.sendall(request)
                response = http.client.HTTPResponse(s)
                response.begin()
                body = response.read()
            if response.status != 200:
                reason = "status %d" % response.status
            else:
                info = json.loads(body.decode("utf-8", errors="replace"))
                pod = str(info.get("pod", ""))
                wrong = []
                for key, want in (("host", args.host_header), ("path", "/"), ("method", "GET"),
                                  ("namespace", args.namespace)):
                    if info.get(key) != want:
                        wrong.append("%s=%r want %r" % (key, info.get(key), want))
                if not pod.startswith(args.backend):
                    wrong.append("pod=%r want prefix %r" % (pod, args.backend))
                if wrong:
                    reason = "mismatch: " + "; ".join(wrong)
        except (OSError, ValueError, http.client.HTTPException, AttributeError) as e:
            reason = "%s: %s" % (type(e).__name__, e)
        if reason is None:
            streak += 1
            if streak >= 3:
                print("ok pod=%s" % pod)
                return
            continue
        streak, last = 0, reason
        if time.monotonic() + 1 >= deadline:
            print("failed after %ss: %s" % (args.timeout, last))
            sys.exit(1)
        time.sleep(1)


def main():
    parser = argparse.ArgumentParser(description="Gateway API echo-basic stand-in and conformance clients")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("serve")
    p.add_argument("host")
    p.add_argument("--namespace", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--pod", required=True)
    p.add_argument("--tcp", type=int, action="append")
    p.add_argument("--udp", type=int, action="append")
    p.add_argument("--tls", type=int, action=Listener)
    p.add_argument("--https", type=int, action=Listener)
    p.add_argument("--cert", action=Credential)
    p.add_argument("--key", action=Credential)
    p.set_defaults(func=serve, secure=None, creds=None)

    p = sub.add_parser("tcp-expect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--namespace", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--ca")
    p.add_argument("--sni")
    p.set_defaults(func=tcp_expect)

    p = sub.add_parser("tcp-once")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=5)
    p.set_defaults(func=tcp_once)

    p = sub.add_parser("udp-expect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--service")
    p.add_argument("--namespace")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=udp_expect)

    p = sub.add_parser("udp-any")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=udp_any)

    p = sub.add_parser("weighted")
    p.add_argument("proto", choices=("tcp", "udp"))
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=10)
    p.set_defaults(func=weighted)

    p = sub.add_parser("tls-rejected")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--sni", required=True)
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=tls_rejected)

    p = sub.add_parser("https-expect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--sni", required=True)
    p.add_argument("--host", dest="host_header", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=https_expect)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
