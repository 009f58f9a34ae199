//! A cgroup v2 directory with the path the kubelet (systemd driver) and containerd give a
//! container, made by the test: root may create directories of any name in the unified
//! hierarchy and move a child process into one through `cgroup.procs`. No Kubernetes runs here;
//! what Periscope sees of a pod is only this path, so a path of the same shape is the real input.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
};

/// The directories are removed on drop, deepest first, once the processes placed in them have
/// exited (drop it after them); directories that existed before (a shared `kubepods.slice`) stay.
pub struct KubeCgroup {
    /// The pod uid as the API server writes it (with dashes).
    pub pod_uid: String,
    /// The 64-hex-digit container id.
    pub container_id: String,
    /// The path relative to the hierarchy's root, as `/proc/PID/cgroup` shows it.
    pub path: String,
    created: Vec<PathBuf>,
    leaf: PathBuf,
}

impl KubeCgroup {
    /// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
    /// cri-containerd-<id>.scope` under the cgroup v2 root, with a uid and id unique to this
    /// process (its pid and the time).
    pub fn burstable_containerd() -> Self {
        let seed = format!(
            "{:08x}{:016x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
        );
        let pod_uid = format!(
            "{}-{}-4{}-8{}-{}",
            &seed[0..8],
            &seed[8..12],
            &seed[12..15],
            &seed[15..18],
            &seed[12..24]
        );
        let container_id = format!("{seed}{seed}{}", &seed[..16]);
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container_id}.scope",
            pod_uid.replace('-', "_")
        );
        let root = v2_root();
        let mut created = Vec::new();
        let mut dir = root.clone();
        for part in path.trim_start_matches('/').split('/') {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                created.push(dir.clone());
            }
        }
        Self {
            pod_uid,
            container_id,
            path,
            created,
            leaf: dir,
        }
    }

    /// Makes `command`'s child join this cgroup before it execs (so its first event is
    /// already seen from inside): the child writes `0` (itself) to `cgroup.procs`.
    pub fn place(&self, command: &mut Command) {
        let procs = CString::new(self.leaf.join("cgroup.procs").as_os_str().as_bytes())
            .expect("no NUL in a cgroup path");
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (open, write, close) on memory allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
                Ok(())
            });
        }
    }
}

impl Drop for KubeCgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("cannot remove test cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// The cgroup v2 hierarchy: `/sys/fs/cgroup/unified` on a hybrid host, else `/sys/fs/cgroup`.
pub fn v2_root() -> PathBuf {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_v2(p))
        .expect("a cgroup v2 hierarchy (cgroup2 mounted at /sys/fs/cgroup[/unified])")
}

fn is_v2(path: &Path) -> bool {
    path.join("cgroup.procs").exists() && path.join("cgroup.subtree_control").exists()
}
