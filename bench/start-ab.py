#!/usr/bin/env python3
"""Start latency of two bot-bottle builds, interleaved: did a change slow `start`?

usage: bench/start-ab.py BASE_BIN NEW_BIN [RUNS]

The same measure as bench/start.py (spawn to the agent's first line, "go",
and to exit) on an empty project, for two binaries in one run, so both see
the same machine. Two projects: `workspace: none` (bench/start.py's) and
`workspace: copy` of an empty directory.
"""
import os, subprocess, sys, tempfile, time

base, new = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 30


def project(mode):
    proj = tempfile.mkdtemp(prefix=f"bb-ab-{mode}-")
    m = os.path.join(proj, ".bot-bottle")
    os.makedirs(os.path.join(m, "agents"))
    os.makedirs(os.path.join(m, "bottles"))
    open(os.path.join(m, "bottles/b.yaml"), "w").write(f"backend: native\nworkspace: {mode}\n")
    open(os.path.join(m, "agents/a.md"), "w").write('---\nprovider: command\ncommand: ["sh", "-c", "echo go"]\nbottle: b\n---\n')
    return proj


state = tempfile.mkdtemp(prefix="bb-ab-state-")
env = {**os.environ, "XDG_STATE_HOME": state}
cases = {(b, mode): ([path, "start", "a", "--quiet"], project(mode))
         for mode in ["none", "copy"] for b, path in [("base", base), ("new", new)]}


def once(argv, cwd):
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    line = p.stdout.readline()
    t1 = time.perf_counter()
    _, err = p.communicate()
    t2 = time.perf_counter()
    if line.strip() != b"go" or p.returncode != 0:
        raise SystemExit(f"{argv[0]} in {cwd}: unexpected output {line!r} exit {p.returncode}: {err.decode()}")
    return (t1 - t0) * 1000, (t2 - t0) * 1000


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


for k, (argv, cwd) in cases.items():
    for _ in range(3):
        once(argv, cwd)
firsts = {k: [] for k in cases}
for _ in range(runs):
    for k, (argv, cwd) in cases.items():
        firsts[k].append(once(argv, cwd)[0])
print(f"runs: {runs} each, interleaved")
print(f"{'':24} {'first instr p50':>16} {'p90':>8}")
for (b, mode), v in firsts.items():
    print(f"{b + ' workspace: ' + mode:24} {pct(v, .5):13.1f} ms {pct(v, .9):5.1f} ms")
for mode in ["none", "copy"]:
    r = pct(firsts[("new", mode)], .5) / pct(firsts[("base", mode)], .5)
    print(f"new / base, workspace: {mode} (p50): {r:.3f}")
