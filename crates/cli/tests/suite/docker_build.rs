//! `dockerfile:` bottles on the docker backend: built once (named by the
//! hash of the Dockerfile and its folder), run, and a failed build
//! reported with its log. Offline: `FROM` the test image.

use std::process::Command;

use super::docker::{containers, image, project};
use super::native::panic_or_skip;
use super::start_native::{Project, cli, command, slugs, upstream};

/// `p`'s bottle rewritten to build `.bot-bottle/images/Dockerfile` (with
/// `files` beside it) instead of naming an image.
fn with_dockerfile(p: &Project, dockerfile: &str, files: &[(&str, &str)]) {
    let m = p.dir.path().join(".bot-bottle");
    std::fs::create_dir_all(m.join("images")).expect("mkdir");
    std::fs::write(m.join("images/Dockerfile"), dockerfile).expect("write");
    for (name, text) in files {
        std::fs::write(m.join("images").join(name), text).expect("write");
    }
    let b = m.join("bottles/b.yaml");
    let yaml = std::fs::read_to_string(&b).expect("read");
    let yaml: String = yaml
        .lines()
        .map(|l| if l.starts_with("image:") { "dockerfile: ../images/Dockerfile".to_owned() } else { l.to_owned() })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(b, yaml).expect("write");
}

fn rmi(tag: &str) {
    Command::new("docker").args(["rmi", "-f", tag]).output().expect("docker rmi");
}

fn exists(tag: &str) -> bool {
    Command::new("docker").args(["image", "inspect", tag]).output().expect("docker image inspect").status.success()
}

fn label(tag: &str) -> String {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{index .Config.Labels \"bot-bottle.build\"}}", tag])
        .output()
        .expect("docker image inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_dockerfile_bottle_is_built_once_labelled_and_run() {
    let base = match image() {
        Ok(i) => i,
        Err(why) => return panic_or_skip(&why),
    };
    let (port, _) = upstream();
    let p = project(&base, port, "cat /opt/hello.txt");
    // A nonce: this run's context is new, so the first start must build.
    let nonce = format!("{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().expect("time").as_nanos());
    let hello = format!("hello {nonce}\n");
    with_dockerfile(&p, &format!("FROM {base}\nCOPY hello.txt /opt/hello.txt\n"), &[("hello.txt", &hello)]);

    // The plan names the image by the content hash, and the Dockerfile.
    let plan = command(&p, &["start", "a", "--dry-run", "--format", "json"]).output().expect("dry run");
    assert_eq!(plan.status.code(), Some(0), "{}", String::from_utf8_lossy(&plan.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("json");
    let tag = plan["launch"]["image"].as_str().expect("image").to_owned();
    assert!(tag.starts_with("bot-bottle/build:"), "{tag}");
    let df = p.dir.path().join(".bot-bottle/bottles/../images/Dockerfile");
    assert_eq!(plan["launch"]["dockerfile"], df.display().to_string());

    let first = command(&p, &["start", "a"]).output().expect("start");
    let (out, err) = (String::from_utf8_lossy(&first.stdout), String::from_utf8_lossy(&first.stderr));
    assert_eq!(first.status.code(), Some(0), "{out}\n{err}");
    assert_eq!(out, hello, "the agent runs in the built image: {err}");
    assert!(err.contains("bot-bottle: build: Step 2/4 : COPY hello.txt /opt/hello.txt"), "progress is shown: {err}");
    assert!(err.contains(&format!("bot-bottle: build: Successfully tagged {tag}")), "{err}");
    assert_eq!(label(&tag), "1", "the built image is labelled");

    // Unchanged: no build at all; --quiet shows none either way.
    let second = command(&p, &["start", "a"]).output().expect("start");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&second.stdout), hello);
    assert!(!err.contains("build:"), "an unchanged context is not rebuilt: {err}");
    assert!(containers(&slugs(&p)).is_empty(), "the containers are removed");

    // `cleanup --purge` removes what this state root built, and only that.
    let (code, out) = cli(&p, &["cleanup", "--purge", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("docker: removed image {tag}")), "{out}");
    assert!(!exists(&tag), "the image is gone");
    assert!(exists(&base), "the base image stays");
    let (_, out) = cli(&p, &["cleanup", "--purge", "--yes"]);
    assert!(!out.contains("image"), "once: {out}");
    rmi(&tag);
}

#[test]
fn a_dockerfile_that_fails_to_build_says_why_with_its_log_and_creates_nothing() {
    let base = match image() {
        Ok(i) => i,
        Err(why) => return panic_or_skip(&why),
    };
    let (port, _) = upstream();
    let p = project(&base, port, "echo should-not-run");
    let nonce = std::process::id();
    with_dockerfile(&p, &format!("FROM {base}\nRUN echo building-{nonce} && exit 7\n"), &[]);
    let out = command(&p, &["start", "a", "--quiet"]).output().expect("start");
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(125), "{stdout}\n{err}");
    assert!(!stdout.contains("should-not-run"), "{stdout}");
    assert!(err.contains("building the bottle's image"), "{err}");
    assert!(err.contains("images/Dockerfile failed"), "{err}");
    assert!(err.contains("returned a non-zero code: 7"), "the daemon's reason: {err}");
    assert!(err.contains(&format!("building-{nonce}")), "the tail of the build's log: {err}");
    assert!(!err.contains("bot-bottle: build:"), "--quiet shows no progress: {err}");
    assert!(containers(&slugs(&p)).is_empty(), "no container was made");

    // A FROM that is not on this machine (nothing can be pulled here).
    with_dockerfile(&p, "FROM bot-bottle-test:no-such-tag\n", &[]);
    let out = command(&p, &["start", "a", "--quiet"]).output().expect("start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("bot-bottle-test:no-such-tag"), "{err}");
    // Refused before the daemon is asked: a pull would reach the network
    // outside the proxy, with whatever the image's name carries.
    assert!(err.contains("docker pull bot-bottle-test:no-such-tag"), "{err}");

    // So would an ADD of a URL, fetched by the daemon itself.
    with_dockerfile(&p, "FROM scratch\nADD https://example.com/x /x\n", &[]);
    let out = command(&p, &["start", "a", "--quiet"]).output().expect("start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("ADD `https://example.com/x`"), "{err}");
    assert!(containers(&slugs(&p)).is_empty(), "no container was made");
}

/// The plan of a `dockerfile:` bottle names the image it would build by
/// the content hash, and the Dockerfile; needs no daemon (nothing is built).
#[test]
fn the_plan_shows_the_dockerfile_and_the_tag_it_builds() {
    use std::os::unix::fs::PermissionsExt;
    let p = project("unused:1", 1, "true");
    with_dockerfile(&p, "FROM scratch\nCOPY a /a\n", &[("a", "a\n")]);
    let images = p.dir.path().join(".bot-bottle/images");
    for f in ["Dockerfile", "a"] {
        std::fs::set_permissions(images.join(f), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let out = command(&p, &["start", "a", "--dry-run", "--format", "json"]).output().expect("dry run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let shown = format!(
        "image: {}\nlaunch.image: {}\nlaunch.dockerfile: {}\n",
        plan["image"], plan["launch"]["image"], plan["launch"]["dockerfile"]
    )
    .replace(&p.dir.path().display().to_string(), "[PROJECT]");
    insta::assert_snapshot!("dockerfile-plan", shown);
}

/// A Dockerfile sits in the project, which the agent can write: its `RUN`
/// steps get no network, so a build cannot carry the project out. Checked
/// against a listener on every host address, reached at the docker
/// bridge's gateway.
#[test]
fn run_steps_of_a_build_have_no_network() {
    let base = match image() {
        Ok(i) => i,
        Err(why) => return panic_or_skip(&why),
    };
    let l = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    l.set_nonblocking(true).expect("nonblocking");
    let gw = Command::new("docker")
        .args(["network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}"])
        .output()
        .expect("docker network inspect");
    let gw = String::from_utf8_lossy(&gw.stdout).trim().to_owned();
    let p = project(&base, 1, "echo ran");
    let nonce = format!("{}-{port}", std::process::id());
    with_dockerfile(
        &p,
        &format!(
            "FROM {base}\nRUN curl -s --max-time 3 -o /dev/null http://{gw}:{port}/{nonce} && echo build-reached-the-host \
             || echo build-had-no-network\n"
        ),
        &[],
    );
    let out = command(&p, &["start", "a"]).output().expect("start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("bot-bottle: build: build-had-no-network"), "{err}");
    assert!(l.accept().is_err(), "nothing connected to the host from the build: {err}");
    let (code, out) = super::start_native::cli(&p, &["cleanup", "--purge", "--yes"]);
    assert_eq!(code, 0, "{out}");
}
