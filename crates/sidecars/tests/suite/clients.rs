//! Real clients, run as processes with only the sandbox environment.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub(crate) struct Out {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn command(program: &str, env: &[(String, String)]) -> Command {
    let mut c = Command::new(program);
    c.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("HOME", std::env::temp_dir());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// `curl -sS` through the proxy: prints the body, then the status code on its own last line.
pub(crate) fn curl(env: &[(String, String)], args: &[&str]) -> (u16, String) {
    let out: Out = command("curl", env)
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code} %{http_connect}"])
        .args(args)
        .output()
        .expect("curl runs")
        .into();
    // The request's status; failing that, a refused CONNECT's; else 0
    // (for example, TLS failed inside an accepted tunnel).
    let (body, codes) = out.stdout.rsplit_once('\n').unwrap_or(("", "0 0"));
    let mut it = codes.split_whitespace().map(|c| c.parse::<u16>().unwrap_or(0));
    let (http, connect) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    let code = if http != 0 {
        http
    } else if connect != 0 && connect != 200 {
        connect
    } else {
        0
    };
    (code, format!("{body}{}", out.stderr))
}

pub(crate) fn python(env: &[(String, String)], script: &str) -> Out {
    command("python3", env).args(["-c", script]).output().expect("python3 runs").into()
}

pub(crate) fn python_stdin(env: &[(String, String)], script: &str, stdin: &[u8]) -> Out {
    let mut child = command("python3", env)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write");
    child.wait_with_output().expect("wait").into()
}

pub(crate) fn git(env: &[(String, String)], cwd: &Path, args: &[&str]) -> Out {
    command("git", env).current_dir(cwd).args(args).output().expect("git runs").into()
}

/// Where undici is installed for the node client (`.ci/run` installs it);
/// `None` with the reason when node or undici is missing here.
pub(crate) fn node_with_undici() -> Result<std::path::PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let ok = Command::new("node")
        .current_dir(&dir)
        .args(["-e", "require('undici')"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(dir)
    } else {
        Err(format!("node or undici missing: run `npm install --prefix {} undici@6`", dir.display()))
    }
}

pub(crate) fn node(env: &[(String, String)], dir: &Path, script: &str) -> Out {
    command("node", env).current_dir(dir).args(["-e", script]).output().expect("node runs").into()
}
