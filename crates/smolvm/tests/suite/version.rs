//! The version gate.

use bot_bottle_smolvm::{SUPPORTED, Smolvm, SmolvmError, Version};

use super::fake_with;

fn gate(version: &str) -> Result<Version, SmolvmError> {
    fake_with(&[("FAKE_SMOLVM_VERSION", version)]).smolvm.check_version()
}

#[test]
fn in_range() {
    assert_eq!(gate("1.9.3").ok(), Some(Version::new(1, 9, 3)));
    assert_eq!(gate("1.0.2").ok(), Some(Version::new(1, 0, 2)));
    assert_eq!(gate("1.17.0").ok(), Some(Version::new(1, 17, 0)));
    let f = fake_with(&[]);
    assert_eq!(f.smolvm.version().ok(), Some(Version::new(1, 9, 3)), "the fake's default");
    assert!(f.smolvm.is_available());
}

#[test]
fn below_and_above_name_both_and_what_to_do() {
    for (v, found) in [("1.0.1", Version::new(1, 0, 1)), ("2.0.0", Version::new(2, 0, 0))] {
        match gate(v) {
            Err(e @ SmolvmError::Unsupported { .. }) => {
                assert!(matches!(e, SmolvmError::Unsupported { found: f, range } if f == found && range == SUPPORTED));
                assert_eq!(
                    e.to_string(),
                    format!(
                        "smolvm {v} is not supported: need >=1.0.2, <2.0.0; install a smolvm release in that range \
                         or put one first on PATH"
                    )
                );
            }
            other => panic!("{v}: {other:?}"),
        }
    }
    assert!(!fake_with(&[("FAKE_SMOLVM_VERSION", "0.9.0")]).smolvm.is_available());
}

#[test]
fn unparsable() {
    match gate("banana") {
        Err(e @ SmolvmError::BadVersion { .. }) => {
            assert_eq!(e.to_string(), r#"unrecognised version output from `fake-smolvm --version`: "smolvm banana""#)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_program_is_a_spawn_error() {
    let s = Smolvm::at("/nonexistent/smolvm");
    assert!(matches!(s.version(), Err(SmolvmError::Spawn { .. })), "{:?}", s.version());
    assert!(!s.is_available());
    assert_eq!(
        SmolvmError::NotInstalled.to_string(),
        "smolvm is not installed (not on PATH); install it from https://github.com/smol-machines/smolvm/releases \
         (a release in >=1.0.2, <2.0.0)"
    );
}

/// A real smolvm, when one is installed: its version output parses.
#[test]
#[expect(clippy::print_stderr, reason = "a gated test says why it skips")]
fn real_smolvm_version_parses() {
    let Ok(real) = Smolvm::find() else {
        eprintln!("skip: no smolvm on PATH");
        return;
    };
    let v = real.version().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("real smolvm {v}; supported: {}", SUPPORTED.contains(v));
    assert_eq!(bot_bottle_smolvm::is_available(), SUPPORTED.contains(v));
}
