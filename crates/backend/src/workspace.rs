//! The workspace a bottle works on: a copy of the project (default), the
//! project itself (`mount`), or nothing.

use std::path::{Path, PathBuf};

use bot_bottle_manifest::WorkspaceMode;

use crate::{BackendError, io};

/// The host directory to give the bottle as its workspace, made ready:
/// for `copy`, the project is copied into `state/workspace` (kept when
/// resuming), owned by `owner` when given. The user's checkout is never
/// touched in `copy` mode.
pub fn prepare_workspace(
    mode: WorkspaceMode,
    project: &Path,
    state: &Path,
    resume: bool,
    owner: Option<u32>,
) -> Result<Option<PathBuf>, BackendError> {
    Ok(match mode {
        WorkspaceMode::None => None,
        WorkspaceMode::Mount => Some(project.to_path_buf()),
        WorkspaceMode::Copy => {
            let dst = state.join("workspace");
            if !(resume && dst.is_dir()) {
                copy_tree(project, &dst, owner)
                    .map_err(io(format!("copying {} into the workspace", project.display())))?;
            }
            Some(dst)
        }
    })
}

/// Copies a project tree, symlinks as symlinks, modes kept, owned by
/// `owner` when given. Sockets, fifos and devices are not part of a project.
fn copy_tree(src: &Path, dst: &Path, owner: Option<u32>) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    let chown = |p: &Path| -> std::io::Result<()> {
        if let Some(id) = owner {
            std::os::unix::fs::lchown(p, Some(id), Some(id))?;
        }
        Ok(())
    };
    chown(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let ft = e.file_type()?;
        let to = dst.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &to, owner)?;
            std::fs::set_permissions(&to, e.metadata()?.permissions())?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &to)?;
            chown(&to)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &to)?;
            chown(&to)?;
        }
    }
    Ok(())
}
