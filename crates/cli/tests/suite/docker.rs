//! `bot-bottle start --backend docker`, end to end against the local
//! daemon, with the test image built offline (tests/docker/image.sh).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::native::panic_or_skip;
use super::start_native::{Project, cli, command, slugs, start_paused_at, upstream};

const GHP: &str = "ghp_Zq8VtR2mN4kL7pX1cB9dF3hJ6sW0yA5eG2uT";

/// The test image's tag once the daemon answers and the image is built;
/// why not otherwise.
pub(crate) fn image() -> Result<String, String> {
    let ok = Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success());
    if !ok {
        return Err("no docker daemon answers here (`docker info` failed)".into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/docker/image.sh");
    let out = Command::new(script).output().map_err(|e| format!("tests/docker/image.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("tests/docker/image.sh failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A project whose agent runs `command` in a docker bottle of `image`.
pub(crate) fn project(image: &str, port: u16, command: &str) -> Project {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join(".bot-bottle");
    std::fs::create_dir_all(m.join("agents")).expect("mkdir");
    std::fs::create_dir_all(m.join("bottles")).expect("mkdir");
    std::fs::write(
        m.join("bottles/b.yaml"),
        format!(
            "backend: docker\nimage: {image}\nresources: {{ pids: 512 }}\negress:\n  routes:\n    - host: \"127.0.0.1:{port}\"\n      methods: [GET]\n"
        ),
    )
    .expect("write");
    std::fs::write(
        m.join("agents/a.md"),
        format!("---\nprovider: command\ncommand: [\"sh\", \"-c\", {command:?}]\nbottle: b\n---\n"),
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "the user's file\n").expect("write");
    Project { dir, state: tempfile::tempdir().expect("tempdir") }
}

/// Containers labelled for any of `slugs`, running or not.
pub(crate) fn containers(slugs: &[String]) -> Vec<String> {
    slugs
        .iter()
        .flat_map(|s| {
            let out = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label=bot-bottle.slug={s}")])
                .output()
                .expect("docker ps");
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect()
}

/// The runtimes the daemon has of `runc` and `runsc`: runc always (a test
/// that loops over none would pass having run nothing), runsc too in CI,
/// which registers it.
pub(crate) fn runtimes() -> Vec<&'static str> {
    let out = Command::new("docker").args(["info", "--format", "{{range $k, $v := .Runtimes}}{{$k}} {{end}}"]).output();
    let have = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let r: Vec<&str> = ["runc", "runsc"].into_iter().filter(|r| have.split_whitespace().any(|h| h == *r)).collect();
    assert!(r.contains(&"runc"), "the daemon lists no runc runtime: {have:?}");
    if std::env::var_os("CI").is_some() {
        assert!(r.contains(&"runsc"), "CI registers runsc with dockerd: {have:?}");
    }
    r
}

#[test]
fn a_docker_bottle_reaches_only_what_its_routes_allow_and_leaves_nothing() {
    let image = match image() {
        Ok(i) => i,
        Err(why) => return panic_or_skip(&why),
    };
    let runtimes = runtimes();
    for runtime in runtimes {
        reaches_only_its_routes(&image, runtime);
    }
}

fn reaches_only_its_routes(image: &str, runtime: &str) {
    let (port, seen) = upstream();
    let script = format!(
        "for u in http://127.0.0.1:{port}/ok http://denied.example/ 'http://127.0.0.1:{port}/leak?t={GHP}'; do \
           curl -s -o /dev/null -w '%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" \"$u\"; done; \
         curl -s --max-time 3 -o /dev/null --noproxy '*' http://172.17.0.1:{port}/direct || echo direct-refused; \
         id -u; cat /proc/self/status | grep -E '^(CapEff|CapBnd|Seccomp):' | tr -s '\\t ' ' '; \
         grep -q '^NoNewPrivs:.1' /proc/self/status && echo nnp || echo nnp-unreported; \
         awk -F: 'NR>2 {{gsub(/ /, \"\", $1); print $1}}' /proc/net/dev; ls /sys | wc -l; cat /run/bot-bottle/prompt.md >/dev/null && echo prompt; \
         touch /etc/x 2>/dev/null || echo root-read-only; \
         echo changed >> /workspace/notes.txt; exit 3"
    );
    let p = project(image, port, &script);
    let out =
        command(&p, &["start", "a", "--quiet"]).env("BOT_BOTTLE_DOCKER_RUNTIME", runtime).output().expect("start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{runtime}: exit code passes through: {stdout}\n{stderr}");
    // gVisor's /proc reports no NoNewPrivs line; runc's must say 1.
    let nnp = if runtime == "runsc" { "nnp-unreported" } else { "nnp" };
    let agent = if nix::unistd::geteuid().is_root() { "1000".to_owned() } else { nix::unistd::geteuid().to_string() };
    assert_eq!(
        stdout,
        format!(
            "200\n403\n403\ndirect-refused\n{agent}\nCapEff: 0000000000000000\nCapBnd: 0000000000000000\n\
             Seccomp: 2\n{nnp}\nlo\n0\nprompt\nroot-read-only\n"
        ),
        "{runtime}: {stderr}"
    );
    assert_eq!(*seen.lock().expect("lock"), vec!["GET /ok HTTP/1.1".to_owned()], "only the allowed request arrived");
    assert_eq!(std::fs::read_to_string(p.dir.path().join("notes.txt")).expect("read"), "the user's file\n");
    let slugs = slugs(&p);
    let slug = p.state.path().join("bot-bottle/bottles").join(&slugs[0]);
    assert_eq!(std::fs::read_to_string(slug.join("workspace/notes.txt")).expect("read"), "the user's file\nchanged\n");
    assert!(!slug.join("sockets").exists(), "the sockets dir is removed");
    assert!(containers(&slugs).is_empty(), "the container is removed");
}

#[test]
fn cleanup_after_sigkill_at_each_docker_launch_phase_leaves_nothing() {
    let image = match image() {
        Ok(i) => i,
        Err(why) => return panic_or_skip(&why),
    };
    let (port, _) = upstream();
    for phase in ["sidecars", "container-created", "container-started", "running"] {
        let p = project(&image, port, "echo up; sleep 60");
        let mut child = start_paused_at(&p, phase);
        let slugs = slugs(&p);
        if phase != "sidecars" {
            assert_eq!(containers(&slugs).len(), 1, "{phase}: the container exists before the kill");
        }
        Command::new("kill").args(["-KILL", &child.id().to_string()]).status().expect("kill");
        let _ = child.wait();
        let (code, out) = cli(&p, &["cleanup"]);
        assert_eq!(code, 0, "{phase}: {out}");
        assert!(containers(&slugs).is_empty(), "{phase}: a container is left: {out}");
        let bottles = p.state.path().join("bot-bottle/bottles");
        for b in std::fs::read_dir(&bottles).expect("bottles").flatten() {
            assert!(!b.path().join("sockets").exists(), "{phase}: sockets left in {}", b.path().display());
        }
        assert!(!cli(&p, &["list"]).1.contains("running"), "{phase}");
        let started = Instant::now();
        // No forwarder of this bottle is left on the host either.
        let needle = p.state.path().display().to_string();
        while started.elapsed() < Duration::from_secs(5) && procs_with(&needle) > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(procs_with(&needle), 0, "{phase}: processes left");
    }
}

fn procs_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains(needle))
        })
        .count()
}
