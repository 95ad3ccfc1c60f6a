//! Manifest discovery order: flag, env, nearest `.bot-bottle/`, user config.

use std::fs;

use bot_bottle_manifest::{DiscoverError, DiscoverFrom, Found, discover};

#[test]
fn first_hit_wins_in_documented_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let project = t.join("project");
    let deep = project.join("src/deep");
    let flag = t.join("flag-manifest");
    let envd = t.join("env-manifest");
    let home = t.join("home");
    for d in
        [&deep, &project.join(".bot-bottle"), &flag, &envd, &home.join(".config/bot-bottle"), &t.join("xdg/bot-bottle")]
    {
        fs::create_dir_all(d).expect("mkdir");
    }
    let base = DiscoverFrom {
        flag: Some(flag.clone()),
        env: Some(envd.clone()),
        cwd: deep.clone(),
        xdg_config_home: Some(t.join("xdg")),
        home: Some(home.clone()),
    };
    assert_eq!(discover(&base), Ok((flag.clone(), Found::Flag)));
    let no_flag = DiscoverFrom { flag: None, ..base.clone() };
    assert_eq!(discover(&no_flag), Ok((envd.clone(), Found::Env)));
    let no_env = DiscoverFrom { env: None, ..no_flag.clone() };
    assert_eq!(discover(&no_env), Ok((project.join(".bot-bottle"), Found::Nearest)));
    let elsewhere = DiscoverFrom { cwd: t.to_path_buf(), ..no_env.clone() };
    assert_eq!(discover(&elsewhere), Ok((t.join("xdg/bot-bottle"), Found::UserConfig)));
    let no_xdg = DiscoverFrom { xdg_config_home: None, ..elsewhere.clone() };
    assert_eq!(discover(&no_xdg), Ok((home.join(".config/bot-bottle"), Found::UserConfig)));
    // An empty $BOT_BOTTLE_MANIFEST counts as unset.
    let empty_env = DiscoverFrom { env: Some("".into()), ..no_env.clone() };
    assert_eq!(discover(&empty_env), Ok((project.join(".bot-bottle"), Found::Nearest)));
}

#[test]
fn an_explicit_choice_that_is_missing_never_falls_through() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    fs::create_dir_all(t.join(".bot-bottle")).expect("mkdir");
    let from = DiscoverFrom { flag: Some("nope".into()), cwd: t.to_path_buf(), ..DiscoverFrom::default() };
    assert!(matches!(discover(&from), Err(DiscoverError::Missing { how: "--manifest", .. })));
    let from = DiscoverFrom { env: Some(t.join("nope")), cwd: t.to_path_buf(), ..DiscoverFrom::default() };
    assert!(matches!(discover(&from), Err(DiscoverError::Missing { how: "$BOT_BOTTLE_MANIFEST", .. })));
}

#[test]
fn nothing_found_says_where_it_looked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let from =
        DiscoverFrom { cwd: tmp.path().to_path_buf(), home: Some(tmp.path().join("h")), ..DiscoverFrom::default() };
    let err = discover(&from).expect_err("nothing there");
    let msg = err.to_string();
    assert!(msg.contains(".bot-bottle/") && msg.contains("--manifest"), "{msg}");
}
