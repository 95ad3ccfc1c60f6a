//! The git gate's push cost, against pushing directly, in one run.
//!
//! `cargo bench -p bot-bottle-sidecars --bench gate -- [--commits N] [--files N] [--rounds N]`
//!
//! A repository of 1,000 commits and 10,000 files (default) is pushed to a
//! fresh bare repository behind a real sshd on loopback, either directly
//! (`git push ssh://...` with the deploy key) or through the gate (`git
//! push http://gate/...`: the gate refreshes from the upstream, receives the
//! push, scans every object in quarantine, then pushes it on over ssh).
//! Rounds alternate direct and gated, each to a new upstream; the medians
//! and their ratio are reported.

#[path = "../tests/suite/gate_support.rs"]
#[allow(dead_code, unreachable_pub, reason = "shared with the tests; the bench uses part of it")]
mod gate_support;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bot_bottle_manifest::{GitUrl, KeySource, Repo};
use bot_bottle_sidecars::{Gate, GateConfig};
use gate_support::{Sshd, git, host_key, keygen, ok, runtime};
use indexmap::IndexMap;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A line of plausible source text, from a cheap generator.
fn text(seed: &mut u64, lines: usize) -> String {
    const WORDS: &[&str] = &[
        "let", "fn", "value", "count", "return", "match", "self", "items", "push", "result", "config", "index",
        "buffer", "parse", "write", "error", "into", "iter", "map", "collect", "len", "path", "name", "data",
    ];
    let mut s = String::new();
    for _ in 0..lines {
        for _ in 0..8 {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            s.push_str(WORDS[(*seed % WORDS.len() as u64) as usize]);
            s.push(' ');
        }
        s.push('\n');
    }
    s
}

/// A repository with `commits` commits on `main` that together add `files`
/// files (each commit adds its share, and edits a file an earlier one made).
fn make_repo(dir: &Path, home: &Path, commits: usize, files: usize) {
    ok(git(home).args(["init", "-q", "-b", "main"]).arg(dir));
    let mut fi = git(home);
    fi.arg("-C").arg(dir).args(["fast-import", "--quiet"]).stdin(Stdio::piped());
    let mut child = fi.spawn().expect("fast-import");
    let mut w = std::io::BufWriter::new(child.stdin.take().expect("stdin"));
    let per = files.div_ceil(commits);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut made = 0;
    for c in 0..commits {
        let msg = format!("commit {c}\n");
        write!(
            w,
            "commit refs/heads/main\ncommitter Dev <dev@example.com> {} +0000\ndata {}\n{msg}",
            1_700_000_000 + c,
            msg.len()
        )
        .expect("write");
        for _ in 0..per.min(files - made) {
            let body = text(&mut seed, 12);
            write!(w, "M 100644 inline src/m{}/f{made}.rs\ndata {}\n{body}\n", made / 100, body.len()).expect("write");
            made += 1;
        }
        if made > 0 {
            let body = text(&mut seed, 12);
            write!(w, "M 100644 inline src/m0/f0.rs\ndata {}\n{body}\n", body.len()).expect("write");
        }
        writeln!(w).expect("write");
    }
    drop(w);
    assert!(child.wait().expect("wait").success());
    ok(git(home).arg("-C").arg(dir).args(["checkout", "-q", "main"]));
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[expect(clippy::print_stdout, clippy::print_stderr, reason = "a benchmark reports on stdout")]
fn main() {
    let commits = arg("--commits", 1000);
    let files = arg("--files", 10_000);
    let rounds = arg("--rounds", 3);
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    let src = tmp.path().join("src");
    let t = Instant::now();
    make_repo(&src, &home, commits, files);
    let count = ok(git(&home).arg("-C").arg(&src).args(["rev-list", "--count", "main"]));
    let tree = ok(git(&home).arg("-C").arg(&src).args(["ls-tree", "-r", "--name-only", "main"]));
    let objects = ok(git(&home).arg("-C").arg(&src).args(["count-objects", "-v"]));
    eprintln!(
        "repository: {count} commits, {} files, made in {:.1}s ({})",
        tree.lines().count(),
        t.elapsed().as_secs_f64(),
        objects.lines().find(|l| l.starts_with("in-pack") || l.starts_with("count")).unwrap_or_default()
    );
    let sshd = Sshd::start(&tmp.path().join("sshd"), None);
    let key = tmp.path().join("deploy_key");
    sshd.authorize(&keygen(&key));
    let known = tmp.path().join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key)).expect("write");
    let ssh = format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
        key.display(),
        known.display()
    );
    let rt = runtime();
    let (mut direct, mut gated) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for via_gate in [false, true] {
            let name = format!("r{round}-{}.git", if via_gate { "gate" } else { "direct" });
            let upstream = sshd.dir.join("srv/org").join(&name);
            ok(git(&home).args(["init", "-q", "--bare", "-b", "main"]).arg(&upstream));
            let url = format!("ssh://{}@127.0.0.1:{}/org/{name}", sshd.user, sshd.port);
            let (target, _gate) = if via_gate {
                let repo = Repo {
                    url: GitUrl::Ssh {
                        user: Some(sshd.user.clone()),
                        host: "127.0.0.1".into(),
                        port: Some(sshd.port),
                        path: format!("org/{name}"),
                    },
                    key: KeySource::Static { path: key.clone() },
                    host_key: Some(host_key(&sshd.host_key)),
                    branches: vec!["main".into()],
                    allow_force_push: false,
                    allow_delete: false,
                };
                let mut cfg = GateConfig::new("bench", tmp.path().join(format!("gate-{round}")));
                cfg.repos = IndexMap::from([("app".to_owned(), repo)]);
                let gate = rt.block_on(Gate::start(cfg)).expect("gate");
                let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
                let url = format!("http://{}/app.git", l.local_addr().expect("addr"));
                let g = gate.clone();
                rt.spawn(async move { g.serve(l).await });
                (url, Some(gate))
            } else {
                (url, None)
            };
            let t = Instant::now();
            let out = git(&home)
                .arg("-C")
                .arg(&src)
                .env("GIT_SSH_COMMAND", &ssh)
                .args(["push", "-q", &target, "main"])
                .output()
                .expect("push");
            let took = t.elapsed();
            assert!(out.status.success(), "push: {}", String::from_utf8_lossy(&out.stderr));
            let want = ok(git(&home).arg("-C").arg(&src).args(["rev-parse", "main"]));
            assert_eq!(ok(git(&home).arg("--git-dir").arg(&upstream).args(["rev-parse", "main"])), want);
            println!(
                "{{\"round\":{round},\"via\":\"{}\",\"seconds\":{:.3}}}",
                if via_gate { "gate" } else { "direct" },
                took.as_secs_f64()
            );
            if via_gate { gated.push(took) } else { direct.push(took) }
        }
    }
    let (d, g) = (median(direct), median(gated));
    println!(
        "push of {count} commits / {} files: direct {:.2}s, through the gate {:.2}s (median of {rounds}): {:.2}x direct (goal <= 2x)",
        tree.lines().count(),
        d.as_secs_f64(),
        g.as_secs_f64(),
        g.as_secs_f64() / d.as_secs_f64()
    );
}
