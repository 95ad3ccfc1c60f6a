//! `mounts:` on the native backend: the host's rustup toolchain, mounted
//! read-only, builds and tests a crate inside a bottle; refused paths stop
//! the launch with their location.

use std::path::PathBuf;

use super::native::{available, panic_or_skip};
use super::start_native::{command, leftovers, project, upstream};

/// The host's rustup installation, as CI (root) and this machine have it.
fn rustup() -> Result<(PathBuf, PathBuf), String> {
    let home = PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?);
    let (rustup, bin) = (home.join(".rustup"), home.join(".cargo/bin"));
    if rustup.join("toolchains").is_dir() && bin.join("cargo").is_file() {
        Ok((rustup, bin))
    } else {
        Err(format!("no rustup toolchain under {}", home.display()))
    }
}

const TINY: &str = r#"set -e
mkdir -p "$HOME/tiny/src"
cd "$HOME/tiny"
printf '[package]\nname = "tiny"\nversion = "0.1.0"\nedition = "2021"\n' > Cargo.toml
printf 'pub fn add(a: u32, b: u32) -> u32 { a + b }\n#[test]\nfn adds() { assert_eq!(add(2, 3), 5); }\n' > src/lib.rs
cargo test --offline 2>&1
if touch "$RUSTUP_HOME/written" 2>/dev/null; then echo "RUSTUP_HOME IS WRITABLE"; fi
if touch "$(dirname "$(command -v cargo)")/written" 2>/dev/null; then echo "CARGO BIN IS WRITABLE"; fi
echo "PATH=$PATH"
bin="$(dirname "$(command -v cargo)")"
awk -v a="$RUSTUP_HOME" -v b="$bin" '$5 == a || $5 == b || index($5, a "/") == 1 {print "MOUNT", $5, $6}' /proc/self/mountinfo
"#;

#[test]
fn a_crate_builds_and_tests_with_the_hosts_toolchain_mounted_read_only() {
    if let Err(why) = available() {
        panic_or_skip(&why);
        return;
    }
    let (rustup, bin) = match rustup() {
        Ok(found) => found,
        Err(why) => {
            panic_or_skip(&why);
            return;
        }
    };
    let (port, _) = upstream();
    let p = project(port, TINY);
    let b = p.dir.path().join(".bot-bottle/bottles/b.yaml");
    let mut yaml = std::fs::read_to_string(&b).expect("read");
    // rustup's proxies find the toolchains through RUSTUP_HOME; cargo's own
    // home stays the agent's (writable) default.
    yaml.push_str(&format!(
        "mounts:\n  - {}\n  - {}\nenv:\n  RUSTUP_HOME: {}\n",
        rustup.display(),
        bin.display(),
        rustup.display()
    ));
    std::fs::write(&b, yaml).expect("write");
    let out = command(&p, &["start", "a", "--quiet"]).output().expect("start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("test adds ... ok"), "{stdout}");
    assert!(!stdout.contains("WRITABLE"), "{stdout}");
    assert!(stdout.contains(&format!("PATH={}:", bin.display())), "the mount's bin leads PATH: {stdout}");
    assert!(!rustup.join("written").exists() && !bin.join("written").exists());
    // Read-only by the mount itself, not only by file permissions.
    let mounts: Vec<&str> = stdout.lines().filter(|l| l.starts_with("MOUNT ")).collect();
    assert!(mounts.len() >= 2, "both mounts are seen: {stdout}");
    for m in &mounts {
        assert!(m.split(' ').nth(2).is_some_and(|o| o.split(',').any(|f| f == "ro")), "{m}");
    }
    assert_eq!(leftovers(&p), 0);
}

#[test]
fn a_refused_mount_stops_the_launch_with_its_location() {
    let (port, _) = upstream();
    let p = project(port, "true");
    let b = p.dir.path().join(".bot-bottle/bottles/b.yaml");
    let mut yaml = std::fs::read_to_string(&b).expect("read");
    let ssh = p.state.path().join(".ssh");
    std::fs::create_dir_all(&ssh).expect("mkdir");
    // A link whose text hides where it leads is resolved first.
    let link = p.dir.path().join("tools");
    std::os::unix::fs::symlink(&ssh, &link).expect("symlink");
    yaml.push_str(&format!("mounts:\n  - ~/.ssh\n  - {}\n  - /run\n", link.display()));
    std::fs::write(&b, yaml).expect("write");
    let out = command(&p, &["start", "a", "--quiet"]).output().expect("start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for line in [8, 9, 10] {
        assert!(stderr.contains(&format!("bottles/b.yaml:{line}:5")), "line {line}: {stderr}");
    }
    assert!(stderr.contains("lies in ~/.ssh"), "{stderr}");
    assert!(stderr.contains("holds /run"), "{stderr}");
    assert!(super::start_native::slugs(&p).is_empty(), "nothing is created");
}
