//! `dockerfile:` bottles: the Dockerfile's folder tarred as the build
//! context (`.dockerignore` honoured), named by its content hash so an
//! unchanged Dockerfile and context is never built twice, and built by the
//! daemon with no network.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::client::Client;
use super::{LABEL_BACKEND, LABEL_BUILD};
use crate::BackendError;

/// The repository every built image is tagged in; the tag is the hash.
pub(super) const REPO: &str = "bot-bottle/build";
/// The file in the state root listing the images built for it, one tag a
/// line: `cleanup --purge` removes those and no other (the daemon is shared
/// with other users and other bot-bottle state roots).
pub(super) const BUILDS_FILE: &str = "docker-builds";
/// The largest context sent to the daemon: it is held in memory whole.
const MAX_CONTEXT: u64 = 2 << 30;
/// How much of a failed build's log the error carries.
const TAIL_LINES: usize = 20;

/// A build context, ready to send.
pub(super) struct Context {
    /// `bot-bottle/build:<hash>`.
    pub(super) tag: String,
    /// The Dockerfile's name inside the context.
    dockerfile: String,
    tar: Vec<u8>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("tag", &self.tag).field("bytes", &self.tar.len()).finish()
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    crate::io(what)
}

/// The context of `dockerfile`: its folder, every file and symlink in it
/// (symlinks as links, never followed; sockets and devices left out) but
/// what `.dockerignore` excludes, in name order, with fixed owners and
/// times so that the same content always makes the same archive and tag.
pub(super) fn context(dockerfile: &Path) -> Result<Context, BackendError> {
    let dir = dockerfile.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dockerfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| BackendError::Preflight(format!("{} is not a file", dockerfile.display())))?;
    let ignore = dockerignore(dir)?;
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let mut total = 0u64;
    let top = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| BackendError::Io { what: format!("reading {}", dir.display()), source: e.into() })?;
    walk(&top, Path::new(""), &ignore, &name, &mut tar, &mut total)?;
    let tar = tar.into_inner().map_err(io("finishing the build context"))?;
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(&tar);
    let hash: String = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    Ok(Context { tag: format!("{REPO}:{hash}"), dockerfile: name, tar })
}

/// `.dockerignore` in the context's root, in gitignore syntax (docker's
/// own is close: `*`, `**`, `!`, a leading `/`).
fn dockerignore(dir: &Path) -> Result<ignore::gitignore::Gitignore, BackendError> {
    let mut b = ignore::gitignore::GitignoreBuilder::new(dir);
    let file = dir.join(".dockerignore");
    if file.is_file()
        && let Some(e) = b.add(&file)
    {
        return Err(BackendError::Preflight(format!("{}: {e}", file.display())));
    }
    b.build().map_err(|e| BackendError::Preflight(format!("{}: {e}", file.display())))
}

/// Adds the folder open at `dir` (`rel` inside the context) to `tar`,
/// through descriptors: every entry is looked at and opened relative to its
/// folder's descriptor with `O_NOFOLLOW`, so a link swapped in for a file
/// or a folder during the walk is never followed out of the context.
fn walk(
    dir: &OwnedFd,
    rel: &Path,
    ignore: &ignore::gitignore::Gitignore,
    dockerfile: &str,
    tar: &mut tar::Builder<Vec<u8>>,
    total: &mut u64,
) -> Result<(), BackendError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let shown = |name: &Path| rel.join(name).display().to_string();
    let errno = |what: String| move |e: rustix::io::Errno| BackendError::Io { what, source: e.into() };
    let list = rustix::fs::Dir::read_from(dir).map_err(errno(format!("reading {}", rel.display())))?;
    let mut names: Vec<std::ffi::CString> = Vec::new();
    for e in list {
        let e = e.map_err(errno(format!("reading {}", rel.display())))?;
        let n = e.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            names.push(n.to_owned());
        }
    }
    names.sort();
    for name in names {
        let file_name = Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let inner = rel.join(file_name);
        let st = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno(format!("reading {}", shown(file_name))))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        // The Dockerfile always goes, as docker sends it whatever the ignore file says.
        let always = rel.as_os_str().is_empty() && file_name.to_string_lossy() == dockerfile;
        if !always && ignore.matched(&inner, ft == FileType::Directory).is_ignore() {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(st.st_mode & 0o7777);
        let added = |e: std::io::Error| BackendError::Io { what: format!("adding {}", inner.display()), source: e };
        match ft {
            FileType::Directory => {
                let sub = rustix::fs::openat(
                    dir,
                    name.as_c_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno(format!("reading {}", shown(file_name))))?;
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, &inner, std::io::empty()).map_err(added)?;
                walk(&sub, &inner, ignore, dockerfile, tar, total)?;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name.as_c_str(), Vec::new())
                    .map_err(errno(format!("reading {}", shown(file_name))))?;
                let target = Path::new(std::ffi::OsStr::from_bytes(target.to_bytes())).to_path_buf();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, &inner, &target).map_err(added)?;
            }
            FileType::RegularFile => {
                let f = rustix::fs::openat(
                    dir,
                    name.as_c_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno(format!("reading {}", shown(file_name))))?;
                // The size of what was opened, not of what was looked at.
                let len = u64::try_from(rustix::fs::fstat(&f).map_err(errno(shown(file_name)))?.st_size).unwrap_or(0);
                *total += len;
                if *total > MAX_CONTEXT {
                    return Err(BackendError::Preflight(
                        "the build context is over 2 GiB: list what the image does not need in the \
                         .dockerignore beside the Dockerfile"
                            .into(),
                    ));
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(len);
                tar.append_data(&mut h, &inner, std::io::Read::take(std::fs::File::from(f), len)).map_err(added)?;
            }
            // Sockets, fifos and devices have no place in an image.
            _ => {}
        }
    }
    Ok(())
}

/// The Dockerfile as the daemon gets it: from the context's tar.
fn dockerfile_text(ctx: &Context) -> Result<String, BackendError> {
    let mut a = tar::Archive::new(&ctx.tar[..]);
    for e in a.entries().map_err(io("reading the build context"))? {
        let mut e = e.map_err(io("reading the build context"))?;
        if e.path().is_ok_and(|p| p == Path::new(&ctx.dockerfile)) {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut e, &mut text).map_err(io("reading the Dockerfile"))?;
            return Ok(text);
        }
    }
    Err(BackendError::Preflight(format!("the build context holds no {}", ctx.dockerfile)))
}

/// What in a Dockerfile the daemon itself would fetch over the network,
/// outside `RUN`'s `none` network and outside the proxy: `ADD` of a URL
/// or a git repository, and every image it would pull (`FROM`,
/// `COPY --from`) that `local` says is not on the machine. A Dockerfile in
/// the project is the agent's to write, and an image reference can carry
/// data out in its name. The reasons, one per line.
pub(super) fn fetches(dockerfile: &str, local: &dyn Fn(&str) -> bool) -> Vec<String> {
    let joined = dockerfile.replace("\\\r\n", " ").replace("\\\n", " ");
    let mut stages: Vec<String> = Vec::new();
    let mut why = Vec::new();
    let image = |r: &str, stages: &[String], why: &mut Vec<String>, what: &str| {
        if r.eq_ignore_ascii_case("scratch") || stages.iter().any(|s| s.eq_ignore_ascii_case(r)) {
        } else if r.contains('$') {
            why.push(format!("{what} `{r}` names its image through a variable: write the image's name"));
        } else if !local(r) {
            why.push(format!("{what} `{r}` is not on this machine: `docker pull {r}` it yourself first"));
        }
    };
    for line in joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut words = line.split_whitespace();
        let op = words.next().unwrap_or_default().to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        let plain: Vec<&str> = args.iter().copied().filter(|a| !a.starts_with("--")).collect();
        match op.as_str() {
            "FROM" => {
                if let Some(r) = plain.first() {
                    image(r, &stages, &mut why, "FROM");
                }
                if let [_, as_, name, ..] = plain.as_slice()
                    && as_.eq_ignore_ascii_case("as")
                {
                    stages.push((*name).to_owned());
                }
            }
            "COPY" => {
                for from in args.iter().filter_map(|a| a.strip_prefix("--from=")) {
                    if from.parse::<usize>().is_err() {
                        image(from, &stages, &mut why, "COPY --from");
                    }
                }
            }
            "ADD" => {
                let json = line.contains('[');
                for a in &plain {
                    let a = if json { a.trim_matches(|c| c == '[' || c == ']' || c == ',' || c == '"') } else { a };
                    if a.contains("://") || a.starts_with("git@") {
                        why.push(format!("ADD `{a}`: the daemon would fetch it; download it into the build's folder"));
                    }
                }
            }
            _ => {}
        }
    }
    why
}

/// Adds `tag` to the list in `file` (once). A list that cannot be written
/// only means `cleanup --purge` will not find the image; the bottle is fine.
pub(super) fn record(file: &Path, tag: &str) {
    let known = std::fs::read_to_string(file).unwrap_or_default();
    if known.lines().any(|l| l == tag) {
        return;
    }
    let r = std::fs::create_dir_all(file.parent().unwrap_or(Path::new("."))).and_then(|()| {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file)?;
        std::io::Write::write_all(&mut f, format!("{tag}\n").as_bytes())
    });
    if let Err(e) = r {
        tracing::warn!(file = %file.display(), error = %e, "recording a built image; `cleanup --purge` will miss it");
    }
}

/// Removes every image listed in `file` that no container uses, and
/// keeps the list of those left.
pub(super) fn purge(file: &Path) -> Vec<String> {
    let Ok(known) = std::fs::read_to_string(file) else { return Vec::new() };
    let tags: Vec<&str> = known.lines().filter(|l| l.starts_with(REPO)).collect();
    if tags.is_empty() {
        return Vec::new();
    }
    let client = match Client::connect() {
        Ok(c) => c,
        Err(e) => return vec![format!("could not reach the daemon to remove built images: {e}")],
    };
    let (mut did, mut kept) = (Vec::new(), Vec::new());
    for tag in tags {
        match client.remove_image(tag) {
            Ok(true) => did.push(format!("removed image {tag}")),
            Ok(false) => {}
            Err(e) => {
                did.push(format!("kept image {tag}: {e}"));
                kept.push(tag);
            }
        }
    }
    let rest: String = kept.iter().map(|t| format!("{t}\n")).collect();
    let r = if rest.is_empty() { std::fs::remove_file(file) } else { std::fs::write(file, rest) };
    if let Err(e) = r {
        did.push(format!("could not update {}: {e}", file.display()));
    }
    did
}

impl Client {
    /// Removes the image `tag` unless a container uses it; `false`: it
    /// was gone already.
    pub(super) fn remove_image(&self, tag: &str) -> Result<bool, bollard::errors::Error> {
        let opts = bollard::query_parameters::RemoveImageOptionsBuilder::new().force(false).build();
        match self.rt.block_on(self.api.remove_image(tag, Some(opts), None)) {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the image `tag` is on this machine.
    pub(super) fn has_image(&self, tag: &str) -> bool {
        self.rt.block_on(self.api.inspect_image(tag)).is_ok()
    }

    /// Builds `ctx` as `ctx.tag` unless it is built already; each line of
    /// the build's output goes to `progress`. A failed build's error ends
    /// with the tail of its log.
    pub(super) fn build(&self, ctx: Context, source: &Path, progress: &dyn Fn(&str)) -> Result<(), BackendError> {
        if self.has_image(&ctx.tag) {
            tracing::debug!(tag = %ctx.tag, "the image is built already");
            return Ok(());
        }
        let text = dockerfile_text(&ctx)?;
        let refused = fetches(&text, &|r| self.has_image(r));
        if !refused.is_empty() {
            return Err(BackendError::Build {
                dockerfile: source.to_path_buf(),
                why: "it would reach the network outside the bottle's proxy".into(),
                log: refused.join("\n"),
            });
        }
        let labels: HashMap<&str, &str> = [(LABEL_BUILD, "1"), (LABEL_BACKEND, "docker")].into();
        let opts = BuildImageOptionsBuilder::new()
            .dockerfile(&ctx.dockerfile)
            .t(&ctx.tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            // No network for RUN steps: the Dockerfile and its context sit
            // in the project, which the agent may write; a build with a
            // network would carry the project out past the proxy.
            .networkmode("none")
            .build();
        let failed = |why: String, log: &[String]| {
            let tail = log[log.len().saturating_sub(TAIL_LINES)..].join("\n");
            BackendError::Build { dockerfile: source.to_path_buf(), why, log: tail }
        };
        self.rt.block_on(async {
            let body = bollard::body_full(ctx.tar.into());
            let mut s = self.api.build_image(opts, None, Some(body));
            let mut log: Vec<String> = Vec::new();
            while let Some(m) = s.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(bollard::errors::Error::DockerStreamError { error }) => return Err(failed(error, &log)),
                    Err(e) => return Err(failed(e.to_string(), &log)),
                };
                if let Some(e) = m.error_detail.and_then(|d| d.message) {
                    return Err(failed(e, &log));
                }
                for line in m.stream.iter().flat_map(|t| t.lines()).filter(|l| !l.trim().is_empty()) {
                    progress(line);
                    log.push(line.to_owned());
                }
            }
            Ok(())
        })?;
        // A stream that ended without an error is not proof: the image is.
        if self.has_image(&ctx.tag) {
            Ok(())
        } else {
            Err(BackendError::Build {
                dockerfile: source.to_path_buf(),
                why: "the daemon ended the build without an image".into(),
                log: String::new(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    fn names(ctx: &Context) -> Vec<String> {
        let mut a = tar::Archive::new(&ctx.tar[..]);
        a.entries().expect("entries").map(|e| e.expect("entry").path().expect("path").display().to_string()).collect()
    }

    #[test]
    fn the_tag_follows_the_content_and_dockerignore_is_honoured() {
        let d = tempfile::tempdir().expect("tempdir");
        write(d.path(), "Dockerfile", "FROM scratch\nCOPY a /a\n");
        write(d.path(), "a", "one");
        write(d.path(), "secret/key", "k");
        write(d.path(), ".dockerignore", "secret\n*.log\nDockerfile\n");
        write(d.path(), "x.log", "log");
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).expect("symlink");
        std::os::unix::fs::symlink("/etc", d.path().join("linkdir")).expect("symlink");
        let df = d.path().join("Dockerfile");
        let c1 = context(&df).expect("context");
        assert!(c1.tag.starts_with("bot-bottle/build:") && c1.tag.len() == REPO.len() + 1 + 32, "{}", c1.tag);
        // A linked folder is a link too: nothing of /etc is walked.
        assert_eq!(names(&c1), [".dockerignore", "Dockerfile", "a", "link", "linkdir"]);
        // The link goes as a link: nothing outside the folder is read.
        let mut a = tar::Archive::new(&c1.tar[..]);
        let link = a
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry"))
            .find(|e| e.path().is_ok_and(|p| p == Path::new("link")));
        let link = link.expect("link");
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
        assert_eq!(link.size(), 0);
        // Same content, same tag, whatever the times say; new content, new tag.
        std::fs::write(d.path().join("x.log"), "other").expect("write");
        assert_eq!(context(&df).expect("context").tag, c1.tag, "ignored files do not count");
        std::fs::write(d.path().join("a"), "two").expect("write");
        assert_ne!(context(&df).expect("context").tag, c1.tag);
    }

    #[test]
    fn what_the_daemon_would_fetch_is_refused() {
        let local = |r: &str| r == "bot-bottle-test:base";
        let ok =
            "FROM bot-bottle-test:base AS b\nFROM scratch\nCOPY --from=b /x /x\nCOPY --from=0 /y /y\nADD a.tar /\n";
        assert_eq!(fetches(ok, &local), Vec::<String>::new());
        let bad = "FROM registry.example/x:c2VjcmV0\nFROM $BASE\nCOPY --from=other:1 /x /x\n\
                   ADD https://example.com/a /a\nadd [\"git@github.com:o/r\", \"/r\"]\nADD \\\n  http://e/x /x\n";
        let why = fetches(bad, &local);
        assert_eq!(why.len(), 6, "{why:?}");
        assert!(why[0].contains("docker pull registry.example/x:c2VjcmV0"), "{why:?}");
        assert!(why[1].contains("variable"), "{why:?}");
    }
}
