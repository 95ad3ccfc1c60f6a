//! The agent container as the daemon is asked for it: pure, so that what a
//! bottle gets is checked without a daemon.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountBindOptions, MountType};

use super::{FORWARDER, LABEL_BACKEND, LABEL_SLUG, Prepared, SIDECARS};

/// Docker's tmpfs options, given in full: its defaults (`noexec`) would
/// stop an agent from running what it builds in `/tmp`.
fn tmpfs(size: &str, mode: &str, owner: Option<(u32, u32)>) -> String {
    let ids = owner.map(|(u, g)| format!(",uid={u},gid={g}")).unwrap_or_default();
    format!("rw,nosuid,nodev,exec,size={size},mode={mode}{ids}")
}

/// The container: no network at all (`none`: only `lo`), the sidecar
/// sockets and the forwarder bind-mounted read-only, the workspace the only
/// writable host path, everything else read-only or tmpfs; every
/// capability dropped, `no-new-privileges`, limits from the plan. Its main
/// process is the forwarder, as the launcher's user (who owns the sockets).
pub(super) fn container(p: &Prepared, forwarder_host: &str) -> ContainerCreateBody {
    let bind = |source: &str, target: &str, read_only: bool| Mount {
        target: Some(target.to_owned()),
        source: Some(source.to_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Mount::default()
    };
    let mut mounts =
        vec![bind(&p.sockets_dir.display().to_string(), SIDECARS, true), bind(forwarder_host, FORWARDER, true)];
    if let Some(w) = &p.workspace {
        mounts.push(bind(&w.display().to_string(), super::WORKSPACE, false));
    }
    // Host toolchains, read-only all the way down (submounts included).
    for m in &p.mounts {
        let path = m.display().to_string();
        mounts.push(Mount {
            bind_options: Some(MountBindOptions { read_only_force_recursive: Some(true), ..Default::default() }),
            ..bind(&path, &path, true)
        });
    }
    let (au, ag) = p.agent_ids;
    let tmpfs: HashMap<String, String> = [
        (super::HOME.to_owned(), tmpfs("1g", "0700", Some((au, ag)))),
        ("/tmp".to_owned(), tmpfs("1g", "1777", None)),
        (super::STATE_DIR.to_owned(), tmpfs("16m", "0755", Some((0, 0)))),
    ]
    .into();
    let labels: HashMap<String, String> =
        [(LABEL_SLUG.to_owned(), p.slug.clone()), (LABEL_BACKEND.to_owned(), "docker".to_owned())].into();
    let mut cmd = vec!["__bottle-forward".to_owned()];
    cmd.extend(p.sockets.iter().map(|(name, port)| format!("{port}={SIDECARS}/{name}")));
    let (fu, fg) = p.forwarder_ids;
    ContainerCreateBody {
        image: Some(p.image.clone()),
        hostname: Some("bottle".into()),
        user: Some(format!("{fu}:{fg}")),
        entrypoint: Some(vec![FORWARDER.to_owned()]),
        cmd: Some(cmd),
        env: Some(vec![]),
        working_dir: Some("/".into()),
        network_disabled: Some(true),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            readonly_rootfs: Some(true),
            mounts: Some(mounts),
            tmpfs: Some(tmpfs),
            // Reaps what the agent orphans; the forwarder is not an init.
            init: Some(true),
            pids_limit: Some(i64::from(p.pids)),
            memory: p.memory.and_then(|m| i64::try_from(m).ok()),
            // No swap beyond the memory limit.
            memory_swap: p.memory.and_then(|m| i64::try_from(m).ok()),
            nano_cpus: p.millicpus.map(|m| i64::from(m) * 1_000_000),
            runtime: p.runtime.clone(),
            ipc_mode: Some("private".into()),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared() -> Prepared {
        Prepared {
            container: "bot-bottle-x".into(),
            image: "img:1".into(),
            runtime: Some("runsc".into()),
            workspace: Some("/w".into()),
            sockets_dir: "/s".into(),
            mounts: vec!["/opt/rust".into()],
            sockets: vec![("proxy.sock".into(), 3128)],
            agent_ids: (1000, 1000),
            forwarder_ids: (0, 0),
            pids: 512,
            memory: Some(1 << 30),
            millicpus: Some(1500),
            warnings: vec![],
            slug: "x".into(),
            workspace_mode: bot_bottle_manifest::WorkspaceMode::Mount,
            project: "/w".into(),
            state: "/st".into(),
            resume: false,
        }
    }

    #[test]
    fn the_container_has_no_network_no_caps_and_a_read_only_root() {
        let c = container(&prepared(), "/usr/bin/bot-bottle");
        let h = c.host_config.expect("host config");
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(c.network_disabled, Some(true));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
        assert!(h.cap_add.is_none() && h.privileged.is_none() && h.binds.is_none());
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges:true".to_owned()]));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!((h.pids_limit, h.memory, h.memory_swap), (Some(512), Some(1 << 30), Some(1 << 30)));
        assert_eq!(h.nano_cpus, Some(1_500_000_000));
        assert_eq!(h.runtime.as_deref(), Some("runsc"));
        let mounts = h.mounts.expect("mounts");
        // Host paths: the sockets and the forwarder read-only, the workspace.
        let writable: Vec<_> = mounts.iter().filter(|m| m.read_only != Some(true)).collect();
        assert_eq!(writable.len(), 1);
        assert_eq!(writable[0].target.as_deref(), Some("/workspace"));
        assert!(mounts.iter().all(|m| m.source.as_deref() != Some("/var/run/docker.sock")));
        // A `mounts:` entry: at its own path, read-only with its submounts.
        let rust = mounts.iter().find(|m| m.target.as_deref() == Some("/opt/rust")).expect("mount");
        assert_eq!(rust.source.as_deref(), Some("/opt/rust"));
        assert_eq!(rust.bind_options.as_ref().and_then(|b| b.read_only_force_recursive), Some(true));
        assert_eq!(c.cmd, Some(vec!["__bottle-forward".to_owned(), format!("3128={SIDECARS}/proxy.sock")]));
        assert_eq!(c.labels.expect("labels").get(LABEL_SLUG).map(String::as_str), Some("x"));
    }
}
