//! What a process's cgroup path tells about it: its container (`container.id`, and the
//! `container.runtime.name` that created it) and, under the kubelet's tree, its pod
//! (`k8s.pod.uid`).
//!
//! The kubelet names pod cgroups by its cgroup driver:
//! - systemd: `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/<ctr>.scope`
//!   with the uid's dashes written as underscores (systemd reserves `-` for slice nesting), and
//!   no `<qos>` level for Guaranteed pods; `<ctr>` is `cri-containerd-<id>`, `crio-<id>` or
//!   `docker-<id>` (cri-dockerd).
//! - cgroupfs: `/kubepods/<qos>/pod<uid>/<id>` (Guaranteed: `/kubepods/pod<uid>/<id>`), the
//!   container directory a bare id (containerd) or `crio-<id>` (CRI-O).
//!
//! Outside Kubernetes, Docker's `/docker/<id>` and `/system.slice/docker-<id>.scope` still give
//! a container. Anything else gives nothing, and no error: most processes are in no container.
//! Paths are written by whoever may create cgroups (a delegated subtree in a container too), so
//! every piece is checked for its exact shape before it becomes an attribute.

use crate::model::resource::attr;

/// What one cgroup path says; every field is `None` for a process outside any container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// `container.id`: the 64-hex-digit id the runtime gave the container.
    pub container_id: Option<String>,
    /// `container.runtime.name` (`containerd`, `cri-o`, `docker`), when the path names it:
    /// a bare id under the cgroupfs driver does not.
    pub runtime: Option<&'static str>,
    /// `k8s.pod.uid`, with its dashes (as the API server writes it).
    pub pod_uid: Option<String>,
}

impl CgroupIdentity {
    /// As OTel semantic-convention attributes: `container.id`, `container.runtime.name`,
    /// `k8s.pod.uid`, those the path named.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        [
            (attr::CONTAINER_ID, self.container_id.clone()),
            (
                attr::CONTAINER_RUNTIME_NAME,
                self.runtime.map(str::to_string),
            ),
            (attr::K8S_POD_UID, self.pod_uid.clone()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
    }

    /// Whether the path named nothing (no container, no pod).
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }

    /// The first `/proc/PID/cgroup` line whose path names a container or pod. On a hybrid
    /// (v1 + v2) host the lines of different hierarchies can disagree: the runtime places a
    /// container in each, but a process moved in only one of them shows its old path in the
    /// others, which name nothing.
    pub fn from_proc_cgroup(text: &str) -> Self {
        text.lines()
            .filter_map(|line| line.splitn(3, ':').nth(2))
            .map(parse)
            .find(|identity| !identity.is_empty())
            .unwrap_or_default()
    }
}

/// Reads the container and pod of one cgroup path (see the module docs for the layouts).
pub fn parse(path: &str) -> CgroupIdentity {
    let mut identity = CgroupIdentity::default();
    let mut under_kubepods = false;
    for component in path.split('/') {
        if identity.pod_uid.is_none() {
            // `kubepods` (cgroupfs), `kubepods.slice`, `kubepods-<qos>.slice` (systemd).
            if component.split(['.', '-']).next() == Some("kubepods") {
                under_kubepods = true;
            }
            if under_kubepods {
                identity.pod_uid = pod_uid(component);
            }
        }
        if identity.container_id.is_none()
            && let Some((id, runtime)) = container(component)
        {
            identity.container_id = Some(id.to_string());
            identity.runtime = runtime;
        }
    }
    // The `/docker/<id>` layout of Docker's cgroupfs driver: the id's parent names the runtime.
    if identity.runtime.is_none() && identity.pod_uid.is_none() {
        let mut parts = path.rsplit('/');
        if let (Some(id), Some("docker")) = (parts.next(), parts.next())
            && is_container_id(id)
        {
            identity.runtime = Some("docker");
        }
    }
    identity
}

/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd) or `pod<uid>` (cgroupfs).
fn pod_uid(component: &str) -> Option<String> {
    let uid = match component.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1.replace('_', "-"),
        None => component.strip_prefix("pod")?.to_string(),
    };
    is_pod_uid(&uid).then_some(uid)
}

/// A pod uid as the kubelet names cgroups after: an RFC 4122 UUID for API pods, or 32 hex
/// digits for static pods (the hash of their manifest).
fn is_pod_uid(uid: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = uid.split('-').collect();
    match groups.as_slice() {
        [a, b, c, d, e] => hex(a, 8) && hex(b, 4) && hex(c, 4) && hex(d, 4) && hex(e, 12),
        [whole] => hex(whole, 32),
        _ => false,
    }
}

/// A container's own cgroup: `<runtime prefix><id>[.scope]`, or a bare id (the cgroupfs
/// driver's, whose path does not say which runtime made it). `crio-conmon-<id>` is CRI-O's
/// monitor process beside the container, not in it, and is not a match.
fn container(component: &str) -> Option<(&str, Option<&'static str>)> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    const PREFIXES: [(&str, &str); 4] = [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ];
    let (id, runtime) = PREFIXES
        .iter()
        .find_map(|(prefix, runtime)| Some((name.strip_prefix(prefix)?, Some(*runtime))))
        .unwrap_or((name, None));
    is_container_id(id).then_some((id, runtime))
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
    const UID: &str = "6f0e1c2d-3b4a-4c5d-8e7f-9a0b1c2d3e4f";
    const UID_: &str = "6f0e1c2d_3b4a_4c5d_8e7f_9a0b1c2d3e4f";

    /// Asserts what `path` parses to: [`ID`] when `container`, [`UID`] when `pod`.
    fn expect(path: &str, container: bool, runtime: Option<&'static str>, pod: bool) {
        let want = CgroupIdentity {
            container_id: container.then(|| ID.to_string()),
            runtime,
            pod_uid: pod.then(|| UID.to_string()),
        };
        assert_eq!(parse(path), want, "{path}");
    }

    #[test]
    fn systemd_driver_paths_of_every_runtime_and_qos_class() {
        let cases = [
            // (path, runtime)
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                "cri-o",
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"),
                "docker",
            ),
            // A container that runs its own systemd: the process sits below the scope.
            (
                format!(
                    "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/init.scope"
                ),
                "containerd",
            ),
        ];
        for (path, runtime) in cases {
            expect(&path, true, Some(runtime), true);
        }
    }

    #[test]
    fn cgroupfs_driver_paths_of_every_qos_class() {
        for qos in ["besteffort/", "burstable/", ""] {
            expect(&format!("/kubepods/{qos}pod{UID}/{ID}"), true, None, true);
            expect(
                &format!("/kubepods/{qos}pod{UID}/crio-{ID}"),
                true,
                Some("cri-o"),
                true,
            );
        }
    }

    #[test]
    fn pod_level_cgroups_give_the_pod_without_a_container() {
        expect(
            &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
            false,
            None,
            true,
        );
        expect(&format!("/kubepods/besteffort/pod{UID}"), false, None, true);
        // CRI-O's monitor runs beside the container, in the pod.
        expect(
            &format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            false,
            None,
            true,
        );
    }

    #[test]
    fn static_pods_have_hash_uids() {
        let hash = "0123456789abcdef0123456789abcdef";
        let got = parse(&format!("/kubepods/burstable/pod{hash}/{ID}"));
        assert_eq!(got.pod_uid.as_deref(), Some(hash));
        assert_eq!(got.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn docker_outside_kubernetes() {
        expect(&format!("/docker/{ID}"), true, Some("docker"), false);
        expect(
            &format!("/system.slice/docker-{ID}.scope"),
            true,
            Some("docker"),
            false,
        );
        expect(
            &format!("/machine.slice/libpod-{ID}.scope"),
            true,
            Some("podman"),
            false,
        );
    }

    #[test]
    fn other_paths_name_nothing() {
        let nothing = [
            "",
            "/",
            "/init.scope",
            "/system.slice/ssh.service",
            "/user.slice/user-1000.slice/session-2.scope",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable",
            // Malformed uids and ids.
            "/kubepods/burstable/podcast",
            "/kubepods.slice/kubepods-burstable-pod1234.slice",
            "/kubepods.slice/kubepods-pod6f0e1c2d_3b4a_4c5d_8e7f_9a0b1c2d3e4.slice",
            "/kubepods/pod6f0e1c2d-3b4a-4c5d-8e7f-9a0b1c2d3e4fff",
            "/docker/3f4e5d",
            "/system.slice/docker-notanid.scope",
        ];
        for path in nothing {
            assert_eq!(parse(path), CgroupIdentity::default(), "{path:?}");
        }
        // A pod-shaped directory outside the kubelet's tree is not a pod.
        assert_eq!(parse(&format!("/user.slice/pod{UID}")).pod_uid, None);
    }

    #[test]
    fn the_first_line_that_names_something_wins() {
        let text = format!(
            "12:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n\
             0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        let got = CgroupIdentity::from_proc_cgroup(&text);
        assert_eq!(got.pod_uid.as_deref(), Some(UID));
        assert_eq!(got.container_id.as_deref(), Some(ID));
        assert_eq!(got.runtime, Some("containerd"));
        assert!(CgroupIdentity::from_proc_cgroup("0::/init.scope\n").is_empty());
        assert!(CgroupIdentity::from_proc_cgroup("garbage").is_empty());
    }

    proptest::proptest! {
        /// Whatever the path, parsing returns (no panic) and only well-formed values.
        #[test]
        fn any_path_parses_to_well_formed_values(path in "(/[a-z0-9_.:-]{0,80}){0,6}") {
            let got = parse(&path);
            if let Some(id) = &got.container_id {
                proptest::prop_assert!(is_container_id(id));
            }
            if let Some(uid) = &got.pod_uid {
                proptest::prop_assert!(is_pod_uid(uid));
            }
        }
    }
}
