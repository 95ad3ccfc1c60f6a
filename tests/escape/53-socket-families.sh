#!/bin/sh
# Socket families outside the bottle's network namespace, or kernel
# modules loaded on demand: AF_VSOCK reaches the hypervisor and host
# services on any VM host, whatever the namespace. Every family but unix,
# inet, inet6 and netlink's routing protocol must be refused by the filter
# (EAFNOSUPPORT), for socket() and socketpair() alike.
# Prints `contained: ...` or `ESCAPED: ...`.
r=$(python3 - <<'PY' 2>&1 | tail -n 1
import errno, socket
families = {
    "AF_VSOCK": 40, "AF_PACKET": 17, "AF_KEY": 15, "AF_ALG": 38, "AF_XDP": 44,
    "AF_BLUETOOTH": 31, "AF_TIPC": 30, "AF_RDS": 21, "AF_CAN": 29, "AF_LLC": 26,
    "AF_NFC": 39, "AF_QIPCRTR": 42, "AF_SMC": 43, "AF_MCTP": 45, "AF_IB": 27,
    "AF_PPPOX": 24, "AF_APPLETALK": 5, "AF_X25": 9, "AF_AX25": 3, "AF_PHONET": 35,
}
bad = []
for name, fam in sorted(families.items()):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET, socket.SOCK_RAW):
        try:
            socket.socket(fam, kind).close()
            bad.append("opened %s" % name)
        except OSError as e:
            if e.errno != errno.EAFNOSUPPORT:
                bad.append("%s type %d: %s (not the filter's EAFNOSUPPORT)" % (name, kind, e))
# Netlink beyond routing: uevents (15), audit (9), sock_diag (4), xfrm (6).
for proto in (15, 9, 4, 6):
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto).close()
        bad.append("opened netlink protocol %d" % proto)
    except OSError as e:
        if e.errno != errno.EAFNOSUPPORT:
            bad.append("netlink %d: %s" % (proto, e))
for fam in (socket.AF_INET, 40):
    try:
        a, b = socket.socketpair(fam, socket.SOCK_STREAM)
        bad.append("socketpair of family %d" % fam)
    except OSError as e:
        if e.errno != errno.EAFNOSUPPORT:
            bad.append("socketpair %d: %s" % (fam, e))
print("; ".join(bad) if bad else "blocked")
PY
)
if [ "$r" = "blocked" ]; then echo "contained: only unix, inet, inet6 and netlink routing sockets open"; else echo "ESCAPED: $r"; fi
