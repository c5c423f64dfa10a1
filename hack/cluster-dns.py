#!/usr/bin/env python3
"""hack/cluster's DNS server: answers the cluster's own names and nothing else.

  <service>.<namespace>.svc.cluster.local   A: the ClusterIP, or the ready endpoints of a
                                            headless Service
  <a-b-c-d>.<namespace>.pod.cluster.local   A: a.b.c.d

Other names under cluster.local get NXDOMAIN; names outside it REFUSED: it never forwards, so no
query leaves the machine. Services and EndpointSlices are listed from the API server every few
seconds, and again at once before a cluster name is answered NXDOMAIN (a Service created a moment
ago resolves at once). UDP and TCP, A records (other types: an empty answer).

  cluster-dns.py --listen 10.88.0.1 --server https://10.88.0.1:6443 --ca ca.crt --token-file F
  cluster-dns.py --listen 10.88.0.1 --check kubernetes.default.svc.cluster.local
                 (exit 0 when the server answers the name with an address)
"""
import argparse
import ipaddress
import json
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.request

DOMAIN = "cluster.local"
A, IN = 1, 1
NOERROR, NXDOMAIN, REFUSED, FORMERR = 0, 3, 5, 1


class Records:
    def __init__(self, server, ca, token):
        self.server, self.token = server.rstrip("/"), token
        self.ctx = ssl.create_default_context(cafile=ca)
        self.lock = threading.Lock()
        self.names, self.loaded = {}, 0.0

    def get(self, path):
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=5) as r:
            return json.load(r)

    def refresh(self):
        names = {}
        headless = set()
        for svc in self.get("/api/v1/services")["items"]:
            md, spec = svc["metadata"], svc.get("spec", {})
            name = f"{md['name']}.{md['namespace']}.svc.{DOMAIN}"
            ips = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip and ip != "None"]
            if ips:
                names[name] = ips
            elif spec.get("type") != "ExternalName":
                headless.add(name)
        for es in self.get("/apis/discovery.k8s.io/v1/endpointslices")["items"]:
            md = es["metadata"]
            svc = md.get("labels", {}).get("kubernetes.io/service-name")
            name = f"{svc}.{md['namespace']}.svc.{DOMAIN}"
            if name in headless and es.get("addressType") == "IPv4":
                for ep in es.get("endpoints") or []:
                    if (ep.get("conditions") or {}).get("ready", True):
                        names.setdefault(name, []).extend(ep.get("addresses", []))
        for name in headless:
            names.setdefault(name, [])  # exists, no ready endpoints: NOERROR, empty
        with self.lock:
            self.names, self.loaded = names, time.monotonic()

    def lookup(self, name):
        """(rcode, [IPv4 addresses]) for a lower-case name without the trailing dot."""
        if name != DOMAIN and not name.endswith("." + DOMAIN):
            return REFUSED, []
        labels = name[: -len(DOMAIN) - 1].split(".") if name != DOMAIN else []
        if len(labels) == 3 and labels[2] == "pod":
            try:
                return NOERROR, [str(ipaddress.IPv4Address(labels[0].replace("-", ".")))]
            except ValueError:
                return NXDOMAIN, []
        for attempt in range(2):
            with self.lock:
                ips = self.names.get(name)
                known_zone = any(n.endswith("." + name) for n in self.names) or name in (
                    DOMAIN, f"svc.{DOMAIN}", f"pod.{DOMAIN}")
            if ips is not None:
                return NOERROR, [ip for ip in ips if ":" not in ip]
            if known_zone:
                return NOERROR, []  # an intermediate name, such as <namespace>.svc.cluster.local
            # Rate-limited: a client looping on a missing name must not hammer the API server.
            if attempt == 0 and len(labels) == 3 and labels[2] == "svc" and time.monotonic() - self.loaded > 0.5:
                try:
                    self.refresh()
                except Exception as e:  # noqa: BLE001 - keep serving what we have
                    print(f"cluster-dns: refresh failed: {e}", file=sys.stderr, flush=True)
        return NXDOMAIN, []


def answer(records, query):
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    pos, labels = 12, []
    try:
        while query[pos]:
            n = query[pos]
            labels.append(query[pos + 1: pos + 1 + n].decode("ascii").lower())
            pos += 1 + n
        pos += 1
        qtype, qclass = struct.unpack("!HH", query[pos: pos + 4])
        question = query[12: pos + 4]
    except (IndexError, struct.error, UnicodeDecodeError):
        return struct.pack("!HHHHHH", qid, 0x8000 | FORMERR, 0, 0, 0, 0)
    if qd != 1:
        return struct.pack("!HHHHHH", qid, 0x8000 | FORMERR, 0, 0, 0, 0)
    rcode, ips = records.lookup(".".join(labels))
    if qtype != A or qclass != IN:
        ips = []
    # QR, AA for our zone, RD copied; no recursion available.
    rflags = 0x8000 | (0x0400 if rcode != REFUSED else 0) | (flags & 0x0100) | rcode
    body = b"".join(struct.pack("!HHHIH", 0xC00C, A, IN, 5, 4) + socket.inet_aton(ip) for ip in ips)
    return struct.pack("!HHHHHH", qid, rflags, 1, len(ips), 0, 0) + question + body


def check(host, port, name):
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack("!HH", A, IN)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        try:
            s.sendto(query, (host, port))
            reply = s.recv(512)
        except OSError:
            return 1
    ok = reply[:2] == b"\x42\x42" and reply[3] & 0x0F == NOERROR and struct.unpack("!H", reply[6:8])[0] > 0
    if ok:
        print(socket.inet_ntoa(reply[-4:]))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--server")
    ap.add_argument("--ca")
    ap.add_argument("--token-file")
    ap.add_argument("--check", metavar="NAME")
    args = ap.parse_args()
    if args.check:
        sys.exit(check(args.listen, args.port, args.check))
    with open(args.token_file) as f:
        records = Records(args.server, args.ca, f.read().strip())

    class UDP(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            reply = answer(records, data)
            if reply:
                sock.sendto(reply, self.client_address)

    class TCP(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                head = self.rfile.read(2)
                if len(head) < 2:
                    return
                reply = answer(records, self.rfile.read(struct.unpack("!H", head)[0]))
                if not reply:
                    return
                self.wfile.write(struct.pack("!H", len(reply)) + reply)

    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer((args.listen, args.port), UDP)
    tcp = socketserver.ThreadingTCPServer((args.listen, args.port), TCP)
    for srv in (udp, tcp):
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(f"cluster-dns: serving {DOMAIN} on {args.listen}:{args.port}", file=sys.stderr, flush=True)
    while True:
        try:
            records.refresh()
        except Exception as e:  # noqa: BLE001 - the API server may be restarting
            print(f"cluster-dns: refresh failed: {e}", file=sys.stderr, flush=True)
        time.sleep(5)


if __name__ == "__main__":
    main()
