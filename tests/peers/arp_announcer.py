#!/usr/bin/env python3
"""Stands in for another provider's layer-2 speaker (MetalLB's): sends a
gratuitous ARP for each IPv4 address given, then answers every ARP request
for them on INTERFACE with that interface's MAC, until it is killed.

usage: arp_announcer.py INTERFACE ADDRESS...
"""
import socket
import struct
import sys

ETH_P_ARP = 0x0806


def main():
    interface = sys.argv[1]
    addresses = {socket.inet_aton(a) for a in sys.argv[2:]}
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind((interface, ETH_P_ARP))
    mac = sock.getsockname()[4]

    def arp(dst, op, sender_ip, target_mac, target_ip):
        header = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
        return dst + mac + struct.pack("!H", ETH_P_ARP) + header + mac + sender_ip + target_mac + target_ip

    for address in addresses:
        sock.send(arp(b"\xff" * 6, 1, address, b"\x00" * 6, address))
    print("announcing", " ".join(sys.argv[2:]), flush=True)
    while True:
        frame = sock.recv(2048)
        if len(frame) < 42:
            continue
        op = struct.unpack("!H", frame[20:22])[0]
        sender_mac, sender_ip, target_ip = frame[22:28], frame[28:32], frame[38:42]
        if op == 1 and target_ip in addresses:
            sock.send(arp(sender_mac, 2, target_ip, sender_mac, sender_ip))


if __name__ == "__main__":
    main()
