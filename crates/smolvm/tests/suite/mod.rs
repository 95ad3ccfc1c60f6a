mod argv;
mod cp;
mod exec;
mod fake;
mod machine;
mod version;

use std::path::PathBuf;
use std::time::Duration;

use bot_bottle_smolvm::{CreateOpts, Smolvm, Source};

pub(crate) const FAKE: &str = env!("CARGO_BIN_EXE_fake-smolvm");

/// A fake smolvm with its own data dir.
pub(crate) struct Fake {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) smolvm: Smolvm,
}

pub(crate) fn fake() -> Fake {
    fake_with(&[])
}

pub(crate) fn fake_with(env: &[(&str, &str)]) -> Fake {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut smolvm = Smolvm::at(FAKE).env("SMOLVM_DATA_DIR", dir.path()).retry_delay(Duration::from_millis(10));
    for (k, v) in env {
        smolvm = smolvm.env(k, v);
    }
    Fake { dir, smolvm }
}

impl Fake {
    /// smolvm's data-local dir under `SMOLVM_DATA_DIR`.
    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join(".local/share")
    }

    pub(crate) fn guest(&self, name: &str) -> PathBuf {
        self.data().join("smolvm/fake-guests").join(name)
    }

    /// Every smolvm command line run so far, in order.
    pub(crate) fn calls(&self) -> Vec<Vec<String>> {
        let log = std::fs::read_to_string(self.data().join("smolvm/fake-calls.jsonl")).unwrap_or_default();
        log.lines().map(|l| serde_json::from_str(l).expect("call line")).collect()
    }

    /// The subcommands run so far: `["machine", "exec"]` → `"exec"`.
    pub(crate) fn subcommands(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c[..2.min(c.len())].join(" ")).collect()
    }

    /// A created and started bare machine.
    pub(crate) fn running(&self, name: &str) {
        self.smolvm.machine_create(&CreateOpts::new(name, Source::Bare)).expect("create");
        self.smolvm.machine_start(name).expect("start");
    }
}

/// A test that cannot run here says why; in CI it fails instead.
#[expect(clippy::print_stderr, reason = "a gated test says why it skips")]
pub(crate) fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "CI must run this: {why}");
    eprintln!("skipping: {why}");
}
