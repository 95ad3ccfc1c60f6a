#!/usr/bin/env python3
"""Docker-backend start latency: spawn to the agent's first instruction.

usage: bench/docker-start.py BOT_BOTTLE_BIN IMAGE [RUNS]

Each contender runs `sh -c 'echo go'` in IMAGE (cached: nothing is pulled
or built); the clock stops when "go" is read and when the process exits.
Compared in one interleaved run, per runtime (runc, and runsc when the
daemon has it): `bot-bottle start` with the docker backend (egress proxy
up, `workspace: none`) and `docker run --rm` of the same image and command
under the same runtime. With BB_PROFILE=1, bot-bottle's own phase timings
(RUST_LOG=debug lines) of one extra run are printed per runtime.
"""
import os, re, subprocess, sys, tempfile, time

bb, image = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 20

proj = tempfile.mkdtemp(prefix="bb-dstart-")
m = os.path.join(proj, ".bot-bottle")
os.makedirs(os.path.join(m, "agents"))
os.makedirs(os.path.join(m, "bottles"))
open(os.path.join(m, "bottles/b.yaml"), "w").write(f"backend: docker\nimage: {image}\nworkspace: none\n")
open(os.path.join(m, "agents/a.md"), "w").write('---\nprovider: command\ncommand: ["sh", "-c", "echo go"]\nbottle: b\n---\n')
state = tempfile.mkdtemp(prefix="bb-dstate-")

out = subprocess.run(["docker", "info", "--format", "{{range $k, $v := .Runtimes}}{{$k}} {{end}}"],
                     capture_output=True, text=True).stdout.split()
runtimes = [r for r in ("runc", "runsc") if r in out]

def contenders(rt):
    env = {**os.environ, "XDG_STATE_HOME": state, "BOT_BOTTLE_DOCKER_RUNTIME": rt}
    return {
        f"bot-bottle start ({rt})": ([bb, "start", "a", "--quiet"], dict(cwd=proj, env=env)),
        f"docker run --rm ({rt})": (["docker", "run", "--rm", "--runtime", rt, image, "sh", "-c", "echo go"], {}),
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

def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]

all_c = {}
for rt in runtimes:
    all_c.update(contenders(rt))
for name, (argv, kw) in all_c.items():
    for _ in range(2):  # warm caches
        once(argv, kw)
firsts = {n: [] for n in all_c}
totals = {n: [] for n in all_c}
for _ in range(runs):  # interleaved, so all see the same machine
    for name, (argv, kw) in all_c.items():
        f, t = once(argv, kw)
        firsts[name].append(f)
        totals[name].append(t)

print(f"runs: {runs} each, interleaved")
print(f"{'':26} {'first instr p50':>16} {'p90':>8} {'exit p50':>10} {'p90':>8}")
for n in all_c:
    print(f"{n:26} {pct(firsts[n], .5):13.1f} ms {pct(firsts[n], .9):5.1f} ms {pct(totals[n], .5):7.1f} ms {pct(totals[n], .9):5.1f} ms")
for rt in runtimes:
    b, d = firsts[f"bot-bottle start ({rt})"], firsts[f"docker run --rm ({rt})"]
    print(f"{rt}: bot-bottle / docker run (first instruction) p50 {pct(b, .5) / pct(d, .5):.3f}, p90 {pct(b, .9) / pct(d, .9):.3f}")

if os.environ.get("BB_PROFILE"):
    for rt in runtimes:
        env = {**all_c[f"bot-bottle start ({rt})"][1]["env"], "RUST_LOG": "bot_bottle=debug,bot_bottle_backend=debug"}
        t0 = time.perf_counter()
        p = subprocess.run([bb, "start", "a"], cwd=proj, env=env, capture_output=True, text=True)
        print(f"--- profile ({rt}), {1000 * (time.perf_counter() - t0):.0f} ms total")
        print(p.stderr)
