"""Captures and replays gossip datagrams, for the replay tests.

  gossip_tap.py capture IFACE DST_IP DST_PORT SECONDS OUT
      record the UDP payloads sent to DST_IP:DST_PORT seen on IFACE (AF_PACKET),
      one hex line each, for SECONDS
  gossip_tap.py replay IN DST_IP DST_PORT
      send each recorded payload to DST_IP:DST_PORT from an ordinary socket
"""
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800


def capture(iface, dst_ip, dst_port, seconds, out):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    s.bind((iface, 0))
    s.settimeout(0.2)
    want = socket.inet_aton(dst_ip)
    end = time.time() + seconds
    with open(out, "w") as f:
        while time.time() < end:
            try:
                frame = s.recv(65535)
            except socket.timeout:
                continue
            ip = frame[14:]
            if len(ip) < 20 or ip[9] != 17 or ip[16:20] != want:
                continue
            ihl = (ip[0] & 0x0F) * 4
            udp = ip[ihl:]
            if len(udp) < 8 or struct.unpack("!H", udp[2:4])[0] != dst_port:
                continue
            f.write(udp[8:].hex() + "\n")
            f.flush()


def replay(path, dst_ip, dst_port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = 0
    for line in open(path):
        line = line.strip()
        if line:
            s.sendto(bytes.fromhex(line), (dst_ip, dst_port))
            n += 1
            time.sleep(0.002)
    print(n)


if __name__ == "__main__":
    if sys.argv[1] == "capture":
        capture(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
    else:
        replay(sys.argv[2], sys.argv[3], int(sys.argv[4]))
