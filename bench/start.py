#!/usr/bin/env python3
"""Start latency: spawn to the agent's first instruction, and to exit.

usage: bench/start.py BOT_BOTTLE_BIN [RUNS]

Each contender runs `sh -c 'echo go'` in its sandbox; the clock stops when
"go" is read (first instruction) and when the process exits. Compared in
one run: `bot-bottle start` (native backend, egress proxy up, empty
project), `docker run --rm` of a minimal busybox image imported offline,
and `bwrap` with namespaces and a read-only /usr.
"""
import os, statistics, subprocess, sys, tempfile, time

bb = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 30

proj = tempfile.mkdtemp(prefix="bb-start-")
m = os.path.join(proj, ".bot-bottle")
os.makedirs(os.path.join(m, "agents"))
os.makedirs(os.path.join(m, "bottles"))
open(os.path.join(m, "bottles/b.yaml"), "w").write("backend: native\nworkspace: none\n")
open(os.path.join(m, "agents/a.md"), "w").write('---\nprovider: command\ncommand: ["sh", "-c", "echo go"]\nbottle: b\n---\n')
state = tempfile.mkdtemp(prefix="bb-state-")

contenders = {
    "bot-bottle start": ([bb, "start", "a", "--quiet"], dict(cwd=proj, env={**os.environ, "XDG_STATE_HOME": state})),
    "docker run --rm": (["docker", "run", "--rm", "bb-bench:busybox", "sh", "-c", "echo go"], {}),
    "bwrap": (["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
               "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
               "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "sh", "-c", "echo go"], {}),
}

def once(argv, kw):
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, **kw)
    line = p.stdout.readline()
    t1 = time.perf_counter()
    p.wait()
    t2 = time.perf_counter()
    if line.strip() != b"go" or p.returncode != 0:
        raise SystemExit(f"{argv[0]}: unexpected output {line!r} exit {p.returncode}")
    return (t1 - t0) * 1000, (t2 - t0) * 1000

res = {}
for name, (argv, kw) in contenders.items():
    for _ in range(3):  # warm caches
        once(argv, kw)
firsts = {n: [] for n in contenders}
totals = {n: [] for n in contenders}
for _ in range(runs):  # interleaved, so all see the same machine
    for name, (argv, kw) in contenders.items():
        f, t = once(argv, kw)
        firsts[name].append(f)
        totals[name].append(t)

def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]

print(f"runs: {runs} each, interleaved")
print(f"{'':18} {'first instr p50':>16} {'p90':>8} {'exit p50':>10} {'p90':>8}")
for n in contenders:
    print(f"{n:18} {pct(firsts[n], .5):13.1f} ms {pct(firsts[n], .9):5.1f} ms {pct(totals[n], .5):7.1f} ms {pct(totals[n], .9):5.1f} ms")
d = pct(firsts["docker run --rm"], .5)
print(f"bot-bottle / docker (first instruction p50): {pct(firsts['bot-bottle start'], .5) / d:.3f}")
print(f"bot-bottle / bwrap  (first instruction p50): {pct(firsts['bot-bottle start'], .5) / pct(firsts['bwrap'], .5):.2f}")
