//! The allowlist check against real SQLite DBs laid out as smolvm lays them
//! out: `vms(name, data BLOB)` holding the machine record's JSON, WAL mode.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bot_bottle_loopback::{AllowlistError, Enforced, Platform, db_path, force_allowlist, verify_allowlist};
use rusqlite::Connection;

const MACHINE: &str = "bb-demo-1a2b3c";

/// A machine record as smolvm 0.8.0 writes it after `machine create --from`
/// dropped `--allow-cidr`: compact JSON, fields in struct order.
const RECORD: &str = r#"{"name":"bb-demo-1a2b3c","created_at":1750870102,"state":"created","pid":null,"pid_start_time":null,"cpus":2,"mem":4096,"mounts":[["/home/u/ws","/workspace",false]],"ports":[[8080,80]],"published_sockets":[],"network":true,"gpu":false,"env":[["HTTPS_PROXY","http://127.0.0.16:3128"]],"workdir":"/workspace","storage_gb":20,"allowed_cidrs":null,"image":null,"labels":{"bot-bottle.slug":"demo-1a2b3c"},"ephemeral":false}"#;

fn want() -> Vec<String> {
    vec!["127.0.0.16/32".to_owned()]
}

fn with_cidrs(cidrs: &str) -> String {
    RECORD.replace(r#""allowed_cidrs":null"#, &format!(r#""allowed_cidrs":{cidrs}"#))
}

/// Creates smolvm's DB at `path` (and its directories) holding `MACHINE`'s
/// record `data` as a BLOB, and returns the connection, still open, as
/// smolvm's server would hold it.
fn smolvm_db(path: &Path, data: &str) -> Connection {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let conn = Connection::open(path).expect("create db");
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).expect("wal");
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "CREATE TABLE vms (name TEXT PRIMARY KEY, data BLOB NOT NULL);
         CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO config VALUES ('schema_version', '3');",
    )
    .expect("schema");
    conn.execute("INSERT INTO vms (name, data) VALUES (?1, ?2)", (MACHINE, data.as_bytes())).expect("insert");
    conn.execute("INSERT INTO vms (name, data) VALUES ('other', ?1)", [b"{\"name\":\"other\"}".as_slice()])
        .expect("insert");
    conn
}

/// The stored record and its SQLite type.
fn stored(db: &Path) -> (String, String) {
    let conn = Connection::open(db).expect("open");
    conn.query_row("SELECT CAST(data AS TEXT), typeof(data) FROM vms WHERE name = ?1", [MACHINE], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .expect("row")
}

fn files(db: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    ["", "-wal"]
        .iter()
        .map(|s| {
            let p = PathBuf::from(format!("{}{s}", db.display()));
            let b = std::fs::read(&p).ok();
            (p, b)
        })
        .collect()
}

#[test]
fn a_dropped_allowlist_is_written_back_as_a_blob_and_nothing_else_changes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("smolvm.db");
    drop(smolvm_db(&db, RECORD));
    assert_eq!(force_allowlist(&db, MACHINE, &want()).expect("force"), Enforced { patched: true });
    assert_eq!(stored(&db), (with_cidrs(r#"["127.0.0.16/32"]"#), "blob".to_owned()));
    verify_allowlist(&db, MACHINE, &want()).expect("verify");
    // The other machine is untouched, and a second run has nothing to do.
    let other: Vec<u8> = Connection::open(&db)
        .expect("open")
        .query_row("SELECT data FROM vms WHERE name='other'", [], |r| r.get(0))
        .expect("other");
    assert_eq!(other, b"{\"name\":\"other\"}");
    assert_eq!(force_allowlist(&db, MACHINE, &want()).expect("again"), Enforced { patched: false });
}

#[test]
fn a_wider_or_different_allowlist_is_replaced_by_exactly_the_wanted_one() {
    for found in [r#"["127.0.0.0/8","::1/128"]"#, r#"["127.0.0.16/32","10.0.0.0/8"]"#, "[]", r#"["127.0.0.16"]"#] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = tmp.path().join("smolvm.db");
        drop(smolvm_db(&db, &with_cidrs(found)));
        assert_eq!(force_allowlist(&db, MACHINE, &want()).expect(found), Enforced { patched: true }, "{found}");
        assert_eq!(stored(&db).0, with_cidrs(r#"["127.0.0.16/32"]"#), "{found}");
    }
}

#[test]
fn a_matching_allowlist_is_left_byte_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("smolvm.db");
    // Sets compare equal whatever the order: nothing to write.
    let record = with_cidrs(r#"["10.0.0.0/8","127.0.0.16/32"]"#);
    let cidrs = ["127.0.0.16/32".to_owned(), "10.0.0.0/8".to_owned()];

    // smolvm's server still holds the DB open, with the record in the WAL.
    let server = smolvm_db(&db, &record);
    let before = files(&db);
    assert!(before[1].1.as_ref().is_some_and(|wal| !wal.is_empty()), "the record is in the WAL");
    assert_eq!(force_allowlist(&db, MACHINE, &cidrs).expect("force"), Enforced { patched: false });
    assert_eq!(files(&db), before);
    drop(server);

    // Nobody holds it: smolvm checkpointed and removed its WAL on exit.
    let before = files(&db);
    assert_eq!(before[1].1, None);
    assert_eq!(force_allowlist(&db, MACHINE, &cidrs).expect("force"), Enforced { patched: false });
    assert_eq!(files(&db), before);
    assert_eq!(stored(&db), (record, "blob".to_owned()));
}

#[test]
fn a_record_stored_as_text_is_rewritten_as_a_blob() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("smolvm.db");
    let conn = smolvm_db(&db, RECORD);
    let record = with_cidrs(r#"["127.0.0.16/32"]"#);
    conn.execute("UPDATE vms SET data = ?1 WHERE name = ?2", (&record, MACHINE)).expect("as text");
    assert_eq!(stored(&db).1, "text");
    assert!(matches!(verify_allowlist(&db, MACHINE, &want()), Err(AllowlistError::Unreadable { .. })));
    assert_eq!(force_allowlist(&db, MACHINE, &want()).expect("force"), Enforced { patched: true });
    assert_eq!(stored(&db), (record, "blob".to_owned()));
}

#[test]
fn a_missing_db_refuses_and_creates_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("smolvm/server/smolvm.db");
    let err = force_allowlist(&db, MACHINE, &want()).expect_err("missing");
    assert!(matches!(&err, AllowlistError::MissingDb { db: d, machine } if *d == db && machine == MACHINE), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "smolvm's state DB {} does not exist, so the egress allowlist of machine `{MACHINE}` cannot be \
             confirmed; refusing to launch (is smolvm's data directory elsewhere? set SMOLVM_DATA_DIR as smolvm \
             sees it)",
            db.display()
        )
    );
    assert!(matches!(verify_allowlist(&db, MACHINE, &want()), Err(AllowlistError::MissingDb { .. })));
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0);
}

#[test]
fn a_missing_row_refuses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("smolvm.db");
    drop(smolvm_db(&db, RECORD));
    let err = force_allowlist(&db, "bb-never-created", &want()).expect_err("missing row");
    assert!(matches!(&err, AllowlistError::MissingRow { machine, .. } if machine == "bb-never-created"), "{err:?}");
    assert!(err.to_string().contains("has no record of machine `bb-never-created`; refusing to launch"), "{err}");
}

#[test]
fn an_unreadable_record_refuses_and_is_left_alone() {
    let cases = [
        ("not json", "data is not JSON: expected ident at line 1 column 2"),
        ("[1,2]", "data is not a JSON object"),
        (r#"{"allowed_cidrs":"127.0.0.16/32"}"#, "allowed_cidrs is not a list"),
        (r#"{"allowed_cidrs":[16]}"#, "allowed_cidrs holds something other than strings"),
    ];
    for (data, why) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = tmp.path().join("smolvm.db");
        drop(smolvm_db(&db, data));
        match force_allowlist(&db, MACHINE, &want()) {
            Err(AllowlistError::Unreadable { reason, .. }) => assert_eq!(reason, why, "{data}"),
            other => panic!("{data}: {other:?}"),
        }
        assert_eq!(stored(&db), (data.to_owned(), "blob".to_owned()));
    }
    // And a DB that is not smolvm's at all.
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("smolvm.db");
    Connection::open(&db).expect("create").execute_batch("CREATE TABLE t (x)").expect("schema");
    assert!(matches!(force_allowlist(&db, MACHINE, &want()), Err(AllowlistError::Sqlite { .. })));
}

#[test]
fn a_patch_that_does_not_take_refuses_and_is_rolled_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("smolvm.db");
    let conn = smolvm_db(&db, RECORD);
    conn.execute_batch(
        "CREATE TRIGGER keep_old AFTER UPDATE ON vms BEGIN
             UPDATE vms SET data = old.data WHERE name = old.name;
         END;",
    )
    .expect("trigger");
    drop(conn);
    let err = force_allowlist(&db, MACHINE, &want()).expect_err("mismatch");
    match &err {
        AllowlistError::Mismatch { db: d, machine, want: w, found } => {
            assert_eq!((d, machine.as_str(), w, found), (&db, MACHINE, &want(), &None));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "machine `{MACHINE}` would allow everything (no allowlist) instead of exactly [127.0.0.16/32] (in {}); \
             refusing to launch",
            db.display()
        )
    );
    assert_eq!(stored(&db), (RECORD.to_owned(), "blob".to_owned()));
}

#[test]
fn a_busy_db_is_waited_for() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("smolvm.db");
    let conn = smolvm_db(&db, RECORD);
    conn.execute_batch("BEGIN IMMEDIATE").expect("hold the write lock");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        conn.execute_batch("COMMIT").expect("commit");
    });
    assert_eq!(force_allowlist(&db, MACHINE, &want()).expect("force"), Enforced { patched: true });
    writer.join().expect("join");
    verify_allowlist(&db, MACHINE, &want()).expect("verify");
}

#[test]
fn bad_allowlists_are_refused_before_the_db_is_touched() {
    let missing = Path::new("/nonexistent/smolvm.db");
    assert!(matches!(force_allowlist(missing, MACHINE, &[]), Err(AllowlistError::EmptyAllowlist { .. })));
    for bad in ["127.0.0.16", "127.0.0.1/8", "127.0.0.16/33", "localhost/32", "127.0.0.16/032"] {
        match force_allowlist(missing, MACHINE, &[bad.to_owned()]) {
            Err(AllowlistError::InvalidCidr { cidr, .. }) => assert_eq!(cidr, bad),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let vars: Vec<(String, OsString)> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
    move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

#[test]
fn the_db_path_follows_smolvm_on_each_platform() {
    let linux = |vars: &[(&str, &str)]| db_path(Platform::Linux, &env(vars)).map(|p| p.display().to_string());
    let mac = |vars: &[(&str, &str)]| db_path(Platform::MacOs, &env(vars)).map(|p| p.display().to_string());
    let ok = |s: &str| -> Result<String, ()> { Ok(s.to_owned()) };
    let cases: Vec<(Result<String, AllowlistError>, Result<String, ()>)> = vec![
        (linux(&[("HOME", "/home/u")]), ok("/home/u/.local/share/smolvm/server/smolvm.db")),
        (linux(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "/data")]), ok("/data/smolvm/server/smolvm.db")),
        (linux(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "rel")]), ok("/home/u/.local/share/smolvm/server/smolvm.db")),
        (linux(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "")]), ok("/home/u/.local/share/smolvm/server/smolvm.db")),
        (
            linux(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "/data"), ("SMOLVM_DATA_DIR", "/srv/smolvm")]),
            ok("/srv/smolvm/.local/share/smolvm/server/smolvm.db"),
        ),
        (linux(&[("SMOLVM_DATA_DIR", "/srv/smolvm")]), ok("/srv/smolvm/.local/share/smolvm/server/smolvm.db")),
        (linux(&[("XDG_DATA_HOME", "/data")]), ok("/data/smolvm/server/smolvm.db")),
        (mac(&[("HOME", "/Users/u")]), ok("/Users/u/Library/Application Support/smolvm/server/smolvm.db")),
        (
            mac(&[("HOME", "/Users/u"), ("SMOLVM_DATA_DIR", "/srv/smolvm"), ("XDG_DATA_HOME", "/data")]),
            ok("/Users/u/Library/Application Support/smolvm/server/smolvm.db"),
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got.map_err(|e| panic!("{e}")), want);
    }
    let refused = [
        linux(&[]),
        linux(&[("HOME", "")]),
        linux(&[("HOME", "home/u")]),
        linux(&[("HOME", "/home/u"), ("SMOLVM_DATA_DIR", "srv")]),
        mac(&[]),
        mac(&[("HOME", "Users/u")]),
    ];
    for got in refused {
        assert!(matches!(got, Err(AllowlistError::NoDbPath { .. })), "{got:?}");
    }
    assert_eq!(linux(&[]).expect_err("no home").to_string(), "cannot locate smolvm's state DB: HOME is not set");
    assert_eq!(Platform::current(), if cfg!(target_os = "macos") { Platform::MacOs } else { Platform::Linux });
}

#[test]
fn the_allowlist_is_enforced_at_each_platforms_db_path() {
    for (platform, extra) in [
        (Platform::Linux, None),
        (Platform::Linux, Some(("XDG_DATA_HOME", "xdg"))),
        (Platform::Linux, Some(("SMOLVM_DATA_DIR", "smolvm-data"))),
        (Platform::MacOs, None),
    ] {
        let home = tempfile::tempdir().expect("home");
        let mut vars = vec![("HOME".to_owned(), home.path().display().to_string())];
        if let Some((k, sub)) = extra {
            vars.push((k.to_owned(), home.path().join(sub).display().to_string()));
        }
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let db = db_path(platform, &env(&vars)).expect("path");
        assert!(db.starts_with(home.path()));
        let ctx = format!("{platform:?} {extra:?}");
        assert!(matches!(force_allowlist(&db, MACHINE, &want()), Err(AllowlistError::MissingDb { .. })), "{ctx}");
        drop(smolvm_db(&db, RECORD));
        assert_eq!(force_allowlist(&db, MACHINE, &want()).expect(&ctx), Enforced { patched: true });
        assert_eq!(stored(&db), (with_cidrs(r#"["127.0.0.16/32"]"#), "blob".to_owned()), "{ctx}");
    }
}
