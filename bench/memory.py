#!/usr/bin/env python3
"""The proxy's memory bound, through a real native bottle.

usage: bench/memory.py BOT_BOTTLE_BIN [UPLOADS] [MIB]

A `command` agent in a native bottle runs python, which makes UPLOADS
(default 200) concurrent HTTPS POSTs, each a gzip body of MIB (default 15)
MiB (random data, so about as large compressed as not), through the
bottle's egress proxy to a TLS upstream on the host (python's ssl,
an openssl-made CA) that reads each body slowly and answers with its size.
The proxy runs in the launcher, outside the bottle's cgroup: this reports
the peak RSS (VmHWM) of the `bot-bottle start` process, read from /proc
every 50 ms until it exits, and how the uploads ended (200 whole, 503 over
the budget and how long they waited, other).
"""
import os, subprocess, sys, tempfile, time, collections

bb = sys.argv[1]
uploads = int(sys.argv[2]) if len(sys.argv) > 2 else 200
mib = int(sys.argv[3]) if len(sys.argv) > 3 else 15

UPSTREAM = r'''
import http.server, ssl, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        time.sleep(0.5)
        left = int(self.headers.get("content-length") or 0)
        n = 0
        while left:
            b = self.rfile.read(min(left, 1 << 16))
            if not b: break
            n += len(b); left -= len(b)
        body = str(n).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer.request_queue_size = 1024
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("leaf.pem", "leaf.key")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
'''

AGENT = r'''
import gzip, http.client, os, ssl, sys, threading, time
port, n, mib = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = gzip.compress(os.urandom(mib << 20), 1)
proxy = os.environ["HTTPS_PROXY"].split("//")[1].rstrip("/")
ph, pp = proxy.rsplit(":", 1)
out = []
go = threading.Barrier(n)
def up(i):
    c = http.client.HTTPSConnection(ph, int(pp), context=ssl.create_default_context(), timeout=600)
    c.set_tunnel("127.0.0.1", port)
    go.wait()
    t = time.monotonic()
    try:
        c.request("POST", "/up/%d" % i, body=body, headers={"Content-Encoding": "gzip"})
        r = c.getresponse()
        d = r.read()
        out.append("%d %.1f %s" % (r.status, time.monotonic() - t, d[:60].decode(errors="replace").replace("\n", " ")))
    except Exception as e:
        out.append("0 %.1f %r" % (time.monotonic() - t, e))
ts = [threading.Thread(target=up, args=(i,)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
print("size", len(body))
print("\n".join(out))
'''

work = tempfile.mkdtemp(prefix="bb-mem-")
sh = lambda c: subprocess.run(c, shell=True, cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=bench-ca")
sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr -subj /CN=upstream")
open(os.path.join(work, "ext.cnf"), "w").write("subjectAltName=IP:127.0.0.1\n")
sh("openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 1 -extfile ext.cnf")
open(os.path.join(work, "upstream.py"), "w").write(UPSTREAM)
up = subprocess.Popen([sys.executable, "upstream.py"], cwd=work, stdout=subprocess.PIPE)
port = int(up.stdout.readline())

proj = os.path.join(work, "project")
m = os.path.join(proj, ".bot-bottle")
os.makedirs(os.path.join(m, "agents"))
os.makedirs(os.path.join(m, "bottles"))
open(os.path.join(proj, "agent.py"), "w").write(AGENT)
open(os.path.join(m, "bottles/b.yaml"), "w").write(
    f'backend: native\nresources: {{ pids: 1024 }}\negress:\n  routes:\n    - host: "127.0.0.1:{port}"\n')
cmd = f"unset NO_PROXY no_proxy; python3 agent.py {port} {uploads} {mib}"
open(os.path.join(m, "agents/a.md"), "w").write(f'---\nprovider: command\ncommand: ["sh", "-c", "{cmd}"]\nbottle: b\n---\n')
state = os.path.join(work, "state")
env = {"PATH": os.environ["PATH"], "HOME": state, "XDG_STATE_HOME": state, "BOT_BOTTLE_UPSTREAM_CA": os.path.join(work, "ca.pem")}

t0 = time.monotonic()
p = subprocess.Popen([bb, "start", "a", "--quiet"], cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     stdin=subprocess.DEVNULL, text=True)
hwm = 0
def poll():
    global hwm
    try:
        for l in open(f"/proc/{p.pid}/status"):
            if l.startswith("VmHWM:"):
                hwm = max(hwm, int(l.split()[1]))
    except OSError:
        pass
import threading
stop = False
def watch():
    while not stop:
        poll(); time.sleep(0.05)
w = threading.Thread(target=watch); w.start()
out, err = p.communicate()
stop = True; w.join()
elapsed = time.monotonic() - t0
up.kill()
lines = out.splitlines()
size = next((int(l.split()[1]) for l in lines if l.startswith("size ")), 0)
res = [l for l in lines if l[:1].isdigit()]
kinds = collections.Counter()
waits = collections.defaultdict(list)
for l in res:
    code, secs, rest = (l.split(" ", 2) + ["", ""])[:3]
    k = "200 whole" if code == "200" and rest.strip() == str(size) else ("503 budget" if code == "503" and "budget" in l else f"{code} other")
    kinds[k] += 1
    waits[k].append(float(secs))
print(f"bot-bottle start exit {p.returncode}; {uploads} uploads of {size / 2**20:.1f} MiB gzip; {elapsed:.0f} s")
for k, v in sorted(kinds.items()):
    print(f"  {k}: {v} (time {min(waits[k]):.1f}-{max(waits[k]):.1f} s)")
print(f"launcher peak RSS (VmHWM): {hwm / 1024:.1f} MiB")
if p.returncode != 0 or not res:
    print(err[-2000:], file=sys.stderr)
for l in res:
    if not (l.startswith("200 ") or l.startswith("503 ")):
        print("  ", l[:200])
        break
subprocess.run(["rm", "-rf", work])
