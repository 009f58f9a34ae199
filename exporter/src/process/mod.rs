//! Who a connection belongs to: the process's resource attributes (OTel semantic conventions)
//! and whether the configured selectors pick it.
//!
//! Read once per process from /proc. A process can be gone by the time its events are read
//! (curl exits right after its request), so the kernel's `comm` is the fallback name. The
//! [`ProcessCache`] holds one resource per process, until a while after its exit.

pub mod cache;
pub mod cgroup;
pub mod kubernetes;

use std::{sync::Arc, time::Duration};

pub use self::{cache::ProcessCache, cgroup::CgroupIdentity};
pub use crate::model::resource::ProcessResource;
use crate::model::resource::{attr, node_name};
use serde::Deserialize;

/// Series of an exited process are kept this long (so the last counts get exported), then
/// removed: short-lived clients would otherwise grow the series set forever. 5 minutes, or
/// `PERISCOPE_EXITED_SERIES_TTL` (a duration such as `30s`; the soak tests use a short one).
pub static EXITED_SERIES_TTL: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
    std::env::var("PERISCOPE_EXITED_SERIES_TTL")
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(Duration::from_secs(300))
});

/// One process selector: a process (and connection) matches when every given field matches.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Selector {
    /// `service.name` for what matches (default: OTEL_SERVICE_NAME of the process, else the
    /// executable name).
    pub service_name: Option<String>,
    /// Glob on the executable path, e.g. `/usr/sbin/nginx` or `*/python3*`.
    pub executable: Option<String>,
    /// The process name (comm) or executable file name.
    pub process_name: Option<String>,
    /// Server connections on this listening port, client connections to this port.
    pub port: Option<u16>,
    /// Container id (from the process cgroup), or a prefix of it.
    pub container_id: Option<String>,
}

impl Selector {
    /// Executable globs must compile.
    pub fn validate_all(section: &str, selectors: &[Selector]) -> Result<(), String> {
        for (i, s) in selectors.iter().enumerate() {
            if let Some(glob) = &s.executable
                && let Err(e) = glob::Pattern::new(glob)
            {
                return Err(format!(
                    "{section}.select[{i}].executable: invalid glob {glob:?}: {e}"
                ));
            }
        }
        Ok(())
    }
}

/// Pod names by pod uid and container id (see [`kubernetes::attributes`]).
type PodLookup<'a> = &'a dyn Fn(&str, Option<&str>) -> Vec<(&'static str, String)>;

#[derive(Debug)]
pub struct ProcessInfo {
    pub pid: u32,
    pub exe_path: Option<String>,
    /// `process.executable.name`.
    pub exe_name: String,
    pub comm: String,
    /// The container and pod its cgroup path names (empty outside containers).
    pub cgroup: CgroupIdentity,
    /// OTEL_SERVICE_NAME from the process environment.
    pub env_service_name: Option<String>,
    pub resource: Arc<ProcessResource>,
}

impl ProcessInfo {
    /// Reads /proc/PID; `comm` is what the kernel reported.
    pub fn read(pid: u32, comm: &str, host: &str, service_override: Option<&str>) -> Self {
        let proc = format!("/proc/{pid}");
        let exe_path = std::fs::read_link(format!("{proc}/exe")).ok().map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        });
        let comm = std::fs::read_to_string(format!("{proc}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| comm.to_string());
        let exe_name = exe_path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .map(str::to_string)
            .unwrap_or_else(|| comm.clone());
        let cgroup = std::fs::read_to_string(format!("{proc}/cgroup"))
            .map(|text| CgroupIdentity::from_proc_cgroup(&text))
            .unwrap_or_default();
        let env_service_name = std::fs::read(format!("{proc}/environ")).ok().and_then(|e| {
            e.split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"OTEL_SERVICE_NAME="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .filter(|v| !v.is_empty())
        });
        let mut info = Self {
            pid,
            exe_path,
            exe_name,
            comm,
            cgroup,
            env_service_name,
            resource: Arc::new(ProcessResource {
                service_name: String::new(),
                attributes: Vec::new(),
            }),
        };
        info.resource = Arc::new(info.build_resource(host, service_override));
        info
    }

    /// service.name: configured, else the process's OTEL_SERVICE_NAME, else the executable.
    fn build_resource(&self, host: &str, service_override: Option<&str>) -> ProcessResource {
        let service_name = service_override
            .map(str::to_string)
            .or_else(|| self.env_service_name.clone())
            .unwrap_or_else(|| self.exe_name.clone());
        let mut attributes = vec![
            ("service.name".to_string(), service_name.clone()),
            (
                "service.instance.id".to_string(),
                format!("{host}:{}", self.pid),
            ),
            ("host.name".to_string(), host.to_string()),
            ("process.pid".to_string(), self.pid.to_string()),
            ("process.executable.name".to_string(), self.exe_name.clone()),
            ("telemetry.sdk.name".to_string(), "periscope".to_string()),
        ];
        if let Some(path) = &self.exe_path {
            attributes.push(("process.executable.path".to_string(), path.clone()));
        }
        attributes.extend(self.cgroup_attributes(node_name()));
        attributes.extend(self.pod_names(&kubernetes::attributes));
        ProcessResource {
            service_name,
            attributes,
        }
    }

    /// `container.id`, `container.runtime.name`, `k8s.pod.uid` where the cgroup names them,
    /// and `k8s.node.name` (`node`) for every process on a Kubernetes node.
    fn cgroup_attributes(&self, node: Option<String>) -> Vec<(String, String)> {
        let node = node.map(|n| (attr::K8S_NODE_NAME, n));
        self.cgroup
            .attributes()
            .into_iter()
            .chain(node)
            .map(|(key, value)| (key.to_string(), value))
            .collect()
    }

    /// `k8s.pod.name`, `k8s.namespace.name`, `k8s.container.name` and the workload of the
    /// process's pod, as `lookup` (the watched pods) knows them when the resource is built: a
    /// pod not known yet leaves the process with `k8s.pod.uid` only, for its lifetime (its
    /// series keep one resource).
    fn pod_names(&self, lookup: PodLookup) -> Vec<(String, String)> {
        let Some(uid) = &self.cgroup.pod_uid else {
            return Vec::new();
        };
        lookup(uid, self.cgroup.container_id.as_deref())
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect()
    }

    /// Whether `selector` picks this process for a connection on `port` (server: listening
    /// port; client: the port it connected to).
    pub fn matches(&self, selector: &Selector, port: Option<u16>) -> bool {
        let exe_ok = selector.executable.as_ref().is_none_or(|glob| {
            let path = self.exe_path.as_deref().unwrap_or(&self.exe_name);
            glob::Pattern::new(glob).is_ok_and(|p| p.matches(path))
        });
        let name_ok = selector
            .process_name
            .as_ref()
            .is_none_or(|n| *n == self.comm || *n == self.exe_name);
        let port_ok = selector.port.is_none_or(|p| Some(p) == port);
        let container_ok = selector.container_id.as_ref().is_none_or(|id| {
            self.cgroup
                .container_id
                .as_deref()
                .is_some_and(|c| !id.is_empty() && c.starts_with(id.as_str()))
        });
        exe_ok && name_ok && port_ok && container_ok
    }
}

/// The first selector that picks the process, or `Some(None)` when there are no selectors
/// (everything is picked); `None` when the process is not selected.
pub fn select<'a>(
    selectors: &'a [Selector],
    info: &ProcessInfo,
    port: Option<u16>,
) -> Option<Option<&'a Selector>> {
    if selectors.is_empty() {
        return Some(None);
    }
    selectors.iter().find(|s| info.matches(s, port)).map(Some)
}

/// The local port of listening socket `fd` of process `pid` (see [`socket_ports`]).
pub fn listening_port(pid: u32, fd: u32) -> Option<u16> {
    socket_ports(pid, fd).map(|(local, _)| local)
}

/// The local and remote ports of TCP socket `fd` of process `pid`, from /proc (the socket's
/// inode in /proc/PID/fd, looked up in /proc/PID/net/tcp and tcp6).
pub fn socket_ports(pid: u32, fd: u32) -> Option<(u16, u16)> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let link = link.to_string_lossy();
    let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?;
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        text.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(9) != Some(&inode) {
                return None;
            }
            Some((port(cols.get(1)?)?, port(cols.get(2)?)?))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(exe: &str, comm: &str, container: Option<&str>) -> ProcessInfo {
        ProcessInfo {
            pid: 1,
            exe_path: Some(exe.into()),
            exe_name: exe.rsplit('/').next().unwrap().into(),
            comm: comm.into(),
            cgroup: CgroupIdentity {
                container_id: container.map(str::to_string),
                ..Default::default()
            },
            env_service_name: None,
            resource: Arc::new(ProcessResource {
                service_name: String::new(),
                attributes: Vec::new(),
            }),
        }
    }

    #[test]
    fn selectors_need_every_given_field() {
        let nginx = info("/usr/sbin/nginx", "nginx", Some("abcdef"));
        let by_exe = Selector {
            executable: Some("*/nginx".into()),
            ..Default::default()
        };
        let by_port = Selector {
            process_name: Some("nginx".into()),
            port: Some(8080),
            ..Default::default()
        };
        let by_container = Selector {
            container_id: Some("abc".into()),
            ..Default::default()
        };
        assert!(nginx.matches(&by_exe, None));
        assert!(nginx.matches(&by_port, Some(8080)));
        assert!(!nginx.matches(&by_port, Some(80)));
        assert!(nginx.matches(&by_container, None));
        assert!(!info("/usr/bin/python3", "python3", None).matches(&by_container, None));
        assert_eq!(select(&[], &nginx, None), Some(None));
        assert!(select(std::slice::from_ref(&by_port), &nginx, Some(1)).is_none());
    }

    #[test]
    fn pod_names_are_looked_up_by_the_cgroups_pod_and_container() {
        let mut pod = info("/app", "app", Some("abcdef"));
        pod.cgroup.pod_uid = Some("6f0e1c2d-3b4a-4c5d-8e7f-9a0b1c2d3e4f".into());
        let lookup = |uid: &str, container: Option<&str>| {
            assert_eq!(
                (uid, container),
                ("6f0e1c2d-3b4a-4c5d-8e7f-9a0b1c2d3e4f", Some("abcdef"))
            );
            vec![(attr::K8S_POD_NAME, "web-1".to_string())]
        };
        assert_eq!(
            pod.pod_names(&lookup),
            [("k8s.pod.name".to_string(), "web-1".to_string())]
        );
        // No pod uid, no lookup (a container outside Kubernetes, a host process).
        let docker = info("/app", "app", Some("abcdef"));
        assert!(docker.pod_names(&|_, _| unreachable!()).is_empty());
    }

    #[test]
    fn cgroup_identity_becomes_semantic_convention_attributes() {
        let mut pod = info("/app", "app", Some("abcdef"));
        pod.cgroup.runtime = Some("containerd");
        pod.cgroup.pod_uid = Some("6f0e1c2d-3b4a-4c5d-8e7f-9a0b1c2d3e4f".into());
        let attributes = pod.cgroup_attributes(Some("node-1".into()));
        let keys: Vec<(&str, &str)> = attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("container.id", "abcdef"),
                ("container.runtime.name", "containerd"),
                ("k8s.pod.uid", "6f0e1c2d-3b4a-4c5d-8e7f-9a0b1c2d3e4f"),
                ("k8s.node.name", "node-1"),
            ]
        );
        // A host process outside Kubernetes gets none of them.
        assert!(
            info("/bin/sh", "sh", None)
                .cgroup_attributes(None)
                .is_empty()
        );
    }
}
