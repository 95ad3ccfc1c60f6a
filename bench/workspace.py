#!/usr/bin/env python3
"""Start with a real project: spawn to the agent's first instruction.

usage: bench/workspace.py BOT_BOTTLE_BIN [RUNS] [WORKDIR]

The project (made once, then reused from WORKDIR, default
$TMPDIR/bb-bench-workspace): a git repository of 10,000 tracked files,
200 MB of source-like text in 250 directories, committed and packed, and a
`target/` build directory of 2 GB (2,000 files of 1 MiB), ignored by
.gitignore. Compared in one interleaved run on the same project:

- `bot-bottle start` (native backend, `workspace: copy`, the egress proxy
  up): the clock stops when the agent's first line, "go", is read;
- `git clone --local` of the project: the clock stops when it exits;
- `cp -a` of the project: the clock stops when it exits.

Each run copies into a fresh directory on the same filesystem. The copies
are removed only after the last run (not timed): an ext4 without a journal
(this machine's) scans past recently deleted inodes when it allocates new
ones, so deleting gigabytes between runs would slow whoever ran next.
Caches are warm: one untimed run of each first.
"""
import os, random, shutil, statistics, subprocess, sys, tempfile, time

bb = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
work = sys.argv[3] if len(sys.argv) > 3 else os.path.join(tempfile.gettempdir(), "bb-bench-workspace")
proj = os.path.join(work, "project")
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "-c", "init.defaultBranch=main",
       "-c", "gc.auto=0", "-c", "maintenance.auto=false"]


def make_project():
    if os.path.exists(os.path.join(proj, ".done")):
        return
    shutil.rmtree(proj, ignore_errors=True)
    os.makedirs(proj)
    rnd = random.Random(9)
    words = ["fn", "let", "mut", "match", "impl", "struct", "self", "return", "if", "else", "for", "in",
             "while", "pub", "use", "mod", "crate", "Some", "None", "Ok", "Err", "String", "Vec", "u64",
             "value", "count", "index", "buffer", "result", "error", "config", "request", "response",
             "handle", "state", "path", "name", "data", "items", "token", "=", "==", "{", "}", "(", ")",
             ";", "->", "&", "::", "<", ">", ".", ","]
    # 200 MB over 10,000 files: 20,000 bytes each on average, varied.
    total = 200 * 1000 * 1000
    sizes = [rnd.randint(2000, 38000) for _ in range(10000)]
    scale = total / sum(sizes)
    sizes = [int(s * scale) for s in sizes]
    for i, size in enumerate(sizes):
        d = os.path.join(proj, "src", f"m{i % 250:03d}")
        os.makedirs(d, exist_ok=True)
        out, n = [], 0
        while n < size:
            line = " ".join(rnd.choices(words, k=rnd.randint(4, 14))) + "\n"
            out.append(line)
            n += len(line)
        with open(os.path.join(d, f"f{i:05d}.rs"), "w") as f:
            f.write("".join(out)[:size])
    with open(os.path.join(proj, ".gitignore"), "w") as f:
        f.write("/target/\n")
    subprocess.run(GIT + ["init", "-q"], cwd=proj, check=True)
    subprocess.run(GIT + ["add", "-A"], cwd=proj, check=True)
    subprocess.run(GIT + ["commit", "-qm", "bench"], cwd=proj, check=True)
    subprocess.run(GIT + ["gc", "-q"], cwd=proj, check=True)
    # The build directory: 2 GB of binary output, ignored.
    for i in range(2000):
        d = os.path.join(proj, "target", "debug", "deps" if i % 2 else "build", f"d{i % 40:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"o{i:04d}.rlib"), "wb") as f:
            f.write(os.urandom(1 << 20))
    # The manifest, outside the project (a user's global one).
    m = os.path.join(work, "config", "bot-bottle")
    os.makedirs(os.path.join(m, "agents"), exist_ok=True)
    os.makedirs(os.path.join(m, "bottles"), exist_ok=True)
    with open(os.path.join(m, "bottles", "b.yaml"), "w") as f:
        f.write("backend: native\nworkspace: copy\n")
    with open(os.path.join(m, "agents", "a.md"), "w") as f:
        f.write('---\nprovider: command\ncommand: ["sh", "-c", "echo go"]\nbottle: b\n---\n')
    open(os.path.join(proj, ".done"), "w").close()


def du(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def bot_bottle():
    state = tempfile.mkdtemp(prefix="state-", dir=work)
    env = {**os.environ, "XDG_STATE_HOME": state, "XDG_CONFIG_HOME": os.path.join(work, "config"),
           "HOME": os.path.join(work, "home")}
    t0 = time.perf_counter()
    p = subprocess.Popen([bb, "start", "a", "--quiet"], cwd=proj, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    line = p.stdout.readline()
    t = time.perf_counter() - t0
    _, err = p.communicate()
    if line.strip() != b"go" or p.returncode != 0:
        raise SystemExit(f"bot-bottle: unexpected {line!r} exit {p.returncode}: {err.decode()}")
    return t, state


def clone():
    dst = os.path.join(tempfile.mkdtemp(prefix="clone-", dir=work), "p")
    t0 = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--local", proj, dst], check=True)
    return time.perf_counter() - t0, os.path.dirname(dst)


def cp():
    dst = os.path.join(tempfile.mkdtemp(prefix="cp-", dir=work), "p")
    t0 = time.perf_counter()
    subprocess.run(["cp", "-a", proj, dst], check=True)
    return time.perf_counter() - t0, os.path.dirname(dst)


make_project()
os.makedirs(os.path.join(work, "home"), exist_ok=True)
tracked = int(subprocess.run(GIT + ["ls-files"], cwd=proj, capture_output=True, text=True).stdout.count("\n"))
print(f"project: {tracked} tracked files, {du(os.path.join(proj, 'src')) / 1e6:.0f} MB of them, "
      f".git {du(os.path.join(proj, '.git')) / 1e6:.0f} MB, ignored target/ {du(os.path.join(proj, 'target')) / 1e9:.2f} GB")
contenders = {"bot-bottle start": bot_bottle, "git clone --local": clone, "cp -a": cp}
times = {n: [] for n in contenders}
made = []
for n, f in contenders.items():  # warm caches
    made.append(f()[1])
for _ in range(runs):  # interleaved, so all see the same machine
    for n, f in contenders.items():
        subprocess.run(["sync"], check=True)
        t, d = f()
        times[n].append(t * 1000)
        made.append(d)
        if n == "bot-bottle start":
            ws = [os.path.join(r, "workspace") for r, ds, _ in os.walk(d) if "workspace" in ds][0]
            copied = du(ws)
for d in made:
    shutil.rmtree(d)
print(f"runs: {runs} each, interleaved; bot-bottle's copy was {copied / 1e6:.0f} MB")
print(f"{'':18} {'p50':>10} {'min':>10} {'max':>10}")
for n in contenders:
    v = times[n]
    print(f"{n:18} {statistics.median(v):7.0f} ms {min(v):7.0f} ms {max(v):7.0f} ms")
b = statistics.median(times["bot-bottle start"])
print(f"bot-bottle / git clone --local (p50): {b / statistics.median(times['git clone --local']):.3f}")
print(f"bot-bottle / cp -a (p50): {b / statistics.median(times['cp -a']):.3f}")
