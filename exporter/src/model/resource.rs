//! Resources: who a metric or span belongs to (OTel resource attributes).

use std::{collections::BTreeMap, sync::OnceLock};

/// `host.name`: the kernel's hostname, read once.
pub fn host_name() -> String {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    })
    .clone()
}

/// Resource attribute names of the OpenTelemetry semantic conventions that Periscope sets
/// (registry: `container`, `k8s`). `container.runtime.name` replaced `container.runtime`.
pub mod attr {
    pub const CONTAINER_ID: &str = "container.id";
    pub const CONTAINER_RUNTIME_NAME: &str = "container.runtime.name";
    pub const K8S_POD_UID: &str = "k8s.pod.uid";
    pub const K8S_NODE_NAME: &str = "k8s.node.name";
    // From the API server, with `kubernetes.enabled` (process/kubernetes.rs).
    pub const K8S_POD_NAME: &str = "k8s.pod.name";
    pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
    pub const K8S_CONTAINER_NAME: &str = "k8s.container.name";
    pub const K8S_DEPLOYMENT_NAME: &str = "k8s.deployment.name";
    pub const K8S_REPLICASET_NAME: &str = "k8s.replicaset.name";
    pub const K8S_STATEFULSET_NAME: &str = "k8s.statefulset.name";
    pub const K8S_DAEMONSET_NAME: &str = "k8s.daemonset.name";
    pub const K8S_JOB_NAME: &str = "k8s.job.name";
}

/// The environment variable naming the Kubernetes node the agent runs on: the DaemonSet sets
/// it from the downward API (`spec.nodeName`), the name the collector's `k8sattributes`
/// filter reads too.
pub const NODE_NAME_ENV: &str = "K8S_NODE_NAME";

/// `k8s.node.name`: [`NODE_NAME_ENV`], read once; `None` when unset or empty (no Kubernetes).
pub fn node_name() -> Option<String> {
    static NODE: OnceLock<Option<String>> = OnceLock::new();
    NODE.get_or_init(|| {
        std::env::var(NODE_NAME_ENV)
            .ok()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
    })
    .clone()
}

/// Resource attributes of one observed process.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ProcessResource {
    pub service_name: String,
    pub attributes: Vec<(String, String)>,
}

/// The node agent's own resource: `service.name`, `host.name`, and configured attributes.
#[derive(Debug, Clone)]
pub struct Resource {
    pub attributes: Vec<(String, String)>,
}

impl Resource {
    /// `service_name` defaults to `periscope`; `extra` attributes replace detected ones.
    pub fn detect(service_name: Option<&str>, extra: &BTreeMap<String, String>) -> Self {
        let host = host_name();
        let mut attributes: Vec<(String, String)> = vec![
            (
                "service.name".into(),
                service_name.unwrap_or("periscope").into(),
            ),
            ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
            ("service.instance.id".into(), host.clone()),
            ("host.name".into(), host),
            ("telemetry.sdk.name".into(), "periscope".into()),
            ("telemetry.sdk.language".into(), "rust".into()),
        ];
        if let Some(node) = node_name() {
            attributes.push((attr::K8S_NODE_NAME.into(), node));
        }
        for (k, v) in extra {
            attributes.retain(|(existing, _)| existing != k);
            attributes.push((k.clone(), v.clone()));
        }
        Self { attributes }
    }
}

/// A process resource compared and hashed by identity (one `Arc` per process lifetime): a
/// series key that costs a pointer, and two processes with equal attributes stay apart.
#[derive(Clone, Debug)]
pub struct ResourceId(pub std::sync::Arc<ProcessResource>);

impl PartialEq for ResourceId {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ResourceId {}

impl std::hash::Hash for ResourceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::sync::Arc::as_ptr(&self.0).hash(state);
    }
}
