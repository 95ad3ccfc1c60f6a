//! What a VM with no network boots from. smolvm pulls a registry image
//! inside the guest, which has no network here; so `image:` and
//! `dockerfile:` are built or pulled by docker on the host when docker runs,
//! saved (`docker save`), and handed to smolvm as an archive. A local
//! archive or unpacked rootfs directory given as `image:` is passed as it
//! is, with or without docker.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bot_bottle_manifest::ImageSource;
use bot_bottle_smolvm::Source;

use crate::BackendError;

/// How the plan's image reaches smolvm.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "from")]
pub enum Image {
    /// smolvm's own Alpine rootfs.
    Bare,
    /// A `docker save` archive or a rootfs directory on the host.
    Local(PathBuf),
    /// A registry reference, pulled and saved by docker.
    Saved(String),
    /// A Dockerfile, built and saved by docker.
    Built(PathBuf),
}

/// What the plan asks for, resolved against the project for a relative
/// local path.
pub(super) fn resolve(image: Option<&ImageSource>, project: &Path) -> Image {
    match image {
        None => Image::Bare,
        Some(ImageSource::Dockerfile(p)) => Image::Built(p.clone()),
        Some(ImageSource::Image(r)) => {
            let local = project.join(r);
            let local_like = r.starts_with('/') || r.starts_with("./") || r.starts_with("../");
            if local_like || local.exists() { Image::Local(local) } else { Image::Saved(r.clone()) }
        }
    }
}

/// The source smolvm gets; docker's work is done here. `scratch` holds the
/// saved archive (removed with the bottle's state).
pub(super) fn source(image: &Image, slug: &str, scratch: &Path) -> Result<Source, BackendError> {
    let saved = scratch.join("image.tar");
    match image {
        Image::Bare => Ok(Source::Bare),
        Image::Local(p) => {
            if !p.exists() {
                return Err(BackendError::Preflight(format!("image {} does not exist", p.display())));
            }
            Ok(Source::Image(p.display().to_string()))
        }
        Image::Saved(r) => {
            let docker = docker().map_err(|why| no_docker(&format!("the image `{r}`"), &why))?;
            let mut have = Command::new(&docker);
            have.args(["image", "inspect", r]).stdout(Stdio::null()).stderr(Stdio::null());
            if !run_status(&mut have) {
                run(Command::new(&docker).args(["pull", "--quiet", r]), &format!("docker pull {r}"))?;
            }
            save(&docker, r, &saved)
        }
        Image::Built(dockerfile) => {
            let docker =
                docker().map_err(|why| no_docker(&format!("the Dockerfile {}", dockerfile.display()), &why))?;
            let tag = format!("bot-bottle/{}:latest", slug.to_ascii_lowercase());
            let context = dockerfile.parent().unwrap_or(Path::new("."));
            let mut build = Command::new(&docker);
            build.args(["build", "--quiet", "-t", &tag, "-f"]).arg(dockerfile).arg(context);
            run(&mut build, &format!("docker build {}", dockerfile.display()))?;
            save(&docker, &tag, &saved)
        }
    }
}

fn save(docker: &Path, image: &str, to: &Path) -> Result<Source, BackendError> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(crate::io(format!("creating {}", dir.display())))?;
    }
    let mut c = Command::new(docker);
    c.args(["save", "-o"]).arg(to).arg(image);
    run(&mut c, &format!("docker save {image}"))?;
    Ok(Source::Image(to.display().to_string()))
}

/// docker (from PATH), if its daemon answers.
fn docker() -> Result<PathBuf, String> {
    let docker = PathBuf::from("docker");
    let info = Command::new(&docker).args(["info", "--format", "{{.ServerVersion}}"]).stdin(Stdio::null()).output();
    match info {
        Ok(o) if o.status.success() => Ok(docker),
        Ok(o) => Err(format!("docker's daemon does not answer: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("docker is not installed".into()),
        Err(e) => Err(format!("docker does not run: {e}")),
    }
}

fn no_docker(what: &str, why: &str) -> BackendError {
    BackendError::Preflight(format!(
        "{what} needs docker to reach a VM with no network ({why}): start docker, or set `image:` to a \
         `docker save` archive or an unpacked rootfs directory"
    ))
}

fn run_status(c: &mut Command) -> bool {
    c.status().is_ok_and(|s| s.success())
}

fn run(c: &mut Command, what: &str) -> Result<(), BackendError> {
    let out = c.stdin(Stdio::null()).output().map_err(crate::io(what.to_owned()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(BackendError::Preflight(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_references_are_told_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("rootfs")).expect("mkdir");
        let r = |s: &str| resolve(Some(&ImageSource::Image(s.into())), dir.path());
        assert_eq!(r("rootfs"), Image::Local(dir.path().join("rootfs")));
        assert_eq!(r("./img.tar"), Image::Local(dir.path().join("./img.tar")));
        assert_eq!(r("/abs/img.tar"), Image::Local("/abs/img.tar".into()));
        assert_eq!(r("node:22-slim"), Image::Saved("node:22-slim".into()));
        assert_eq!(resolve(None, dir.path()), Image::Bare);
        let e = source(&Image::Local(dir.path().join("missing")), "s", dir.path()).expect_err("missing");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
