//! Names for the pod a cgroup path points at (`kubernetes.enabled`): `k8s.pod.name`,
//! `k8s.namespace.name`, `k8s.container.name` and the owning workload, from a watch on the
//! pods of this node only (field selector `spec.nodeName`, the node named by `K8S_NODE_NAME`).
//!
//! kube's watcher lists, then watches from the list's resource version, and lists again when
//! the watch expires (410 Gone) or fails, after a delay ([`Retry`]). A relist replaces the whole cache at its
//! end, so a pod deleted while no watch was open goes too. Memory is bounded by the node: only
//! its pods (the kubelet's `max-pods`, 110 by default), and of each only the few strings a
//! resource needs; the full `Pod` objects are dropped as soon as they are read.
//!
//! The deployment of a ReplicaSet-owned pod is the ReplicaSet's name less its
//! `-<pod-template-hash>` (the label the deployment controller puts on the pod and appends to
//! the name), as the collector's `k8sattributes` and Beyla do: no ReplicaSet reads, so no RBAC
//! beyond pods.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::runtime::watcher::{self, Event};
use serde::Deserialize;

use crate::model::resource::attr;

/// The `kubernetes` section of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Watch this node's pods and add their names to every process resource that has a
    /// `k8s.pod.uid`. Needs `K8S_NODE_NAME` and read access to pods (the chart's RBAC).
    pub enabled: bool,
}

/// What a process resource needs of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodNames {
    name: String,
    namespace: String,
    /// `k8s.deployment.name`, `k8s.statefulset.name`... of the controller that owns the pod.
    workload: Vec<(&'static str, String)>,
    /// Container id (without the `containerd://` scheme) to container name, as the kubelet
    /// reported them; a container appears once it has started.
    containers: Vec<(String, String)>,
    /// The name of the pod's only container, when it has no init or ephemeral ones and the
    /// kubelet has reported no container id yet: what runs in the pod in the moments between
    /// the container's start and its status.
    sole_container: Option<String>,
}

impl PodNames {
    /// The pod's uid and names; `None` for an object without a uid (never sent by an API server).
    fn read(pod: &Pod) -> Option<(String, Self)> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone()?;
        let status = pod.status.as_ref();
        let statuses = status.into_iter().flat_map(|s| {
            [
                &s.container_statuses,
                &s.init_container_statuses,
                &s.ephemeral_container_statuses,
            ]
        });
        let containers: Vec<_> = statuses
            .flatten()
            .flatten()
            .filter_map(container_id)
            .collect();
        // Once any id is reported, an id no status names is not the sole container's: it is
        // the pod sandbox's (`pause`), which has a cgroup of its own.
        let sole_container = containers.is_empty().then(|| sole_container(pod)).flatten();
        let names = Self {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            workload: workload(pod),
            containers,
            sole_container,
        };
        Some((uid, names))
    }

    /// Resource attributes for a process of this pod in container `container_id` (if any).
    fn attributes(&self, container_id: Option<&str>) -> Vec<(&'static str, String)> {
        let container = container_id.and_then(|id| {
            let named = self.containers.iter().find(|(known, _)| known == id);
            named.map(|(_, name)| name).or(self.sole_container.as_ref())
        });
        [
            (attr::K8S_POD_NAME, self.name.clone()),
            (attr::K8S_NAMESPACE_NAME, self.namespace.clone()),
        ]
        .into_iter()
        .chain(container.map(|name| (attr::K8S_CONTAINER_NAME, name.clone())))
        .chain(self.workload.iter().cloned())
        .collect()
    }
}

/// `(id, name)` of a started container; the id without its `<runtime>://` scheme, as the
/// cgroup path names it.
fn container_id(status: &ContainerStatus) -> Option<(String, String)> {
    let id = status.container_id.as_deref()?;
    let bare = id.split_once("://").map_or(id, |(_, bare)| bare);
    (!bare.is_empty()).then(|| (bare.to_string(), status.name.clone()))
}

fn sole_container(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let has_others = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty())
        || spec
            .ephemeral_containers
            .as_ref()
            .is_some_and(|c| !c.is_empty());
    match spec.containers.as_slice() {
        [only] if !has_others => Some(only.name.clone()),
        _ => None,
    }
}

/// The owning workload, from the pod's controller reference. A ReplicaSet made by a Deployment
/// gives both names (the pod's `pod-template-hash` label tells it was); a Job made by a
/// CronJob gives the Job only (its name does not say so reliably).
fn workload(pod: &Pod) -> Vec<(&'static str, String)> {
    let mut owners = pod.metadata.owner_references.iter().flatten();
    let Some(owner) = owners.find(|o| o.controller == Some(true)) else {
        return Vec::new();
    };
    let name = owner.name.clone();
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            let deployment = hash.and_then(|h| name.strip_suffix(h.as_str())?.strip_suffix('-'));
            let deployment = deployment.map(|d| (attr::K8S_DEPLOYMENT_NAME, d.to_string()));
            deployment
                .into_iter()
                .chain([(attr::K8S_REPLICASET_NAME, name)])
                .collect()
        }
        "StatefulSet" => vec![(attr::K8S_STATEFULSET_NAME, name)],
        "DaemonSet" => vec![(attr::K8S_DAEMONSET_NAME, name)],
        "Job" => vec![(attr::K8S_JOB_NAME, name)],
        _ => Vec::new(),
    }
}

/// The pods of this node, by uid, as the watch last told.
#[derive(Debug, Default)]
pub struct Pods {
    state: RwLock<State>,
    /// Failed lists and watches (each retried with backoff), and a client that could not be
    /// made.
    errors: AtomicU64,
    /// Whether a first list has landed (startup waits a little for it).
    synced: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct State {
    pods: HashMap<String, PodNames>,
    /// A list in progress: it replaces `pods` at its end.
    relisting: Option<HashMap<String, PodNames>>,
}

impl Pods {
    /// The names of pod `pod_uid` for a process in container `container_id`; nothing for a pod
    /// the watch has not reported (yet).
    pub fn attributes(
        &self,
        pod_uid: &str,
        container_id: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .pods
            .get(pod_uid)
            .map(|pod| pod.attributes(container_id))
            .unwrap_or_default()
    }

    /// Pods held.
    pub fn len(&self) -> usize {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Failed lists and watches since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for the first list; whether it came.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut synced = self.synced.subscribe();
        tokio::time::timeout(timeout, synced.wait_for(|s| *s))
            .await
            .is_ok()
    }

    /// Applies one watch event.
    fn apply(&self, event: Event<Pod>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Init => state.relisting = Some(HashMap::new()),
            Event::InitApply(pod) => {
                if let (Some(relisting), Some((uid, names))) =
                    (state.relisting.as_mut(), PodNames::read(&pod))
                {
                    relisting.insert(uid, names);
                }
            }
            Event::InitDone => {
                if let Some(listed) = state.relisting.take() {
                    state.pods = listed;
                }
                drop(state);
                self.synced.send_replace(true);
            }
            Event::Apply(pod) => {
                if let Some((uid, names)) = PodNames::read(&pod) {
                    state.pods.insert(uid, names);
                }
            }
            Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    state.pods.remove(uid);
                }
            }
        }
    }

    /// Watches the pods of `node` until dropped, retrying failures after [`Retry`]'s delay.
    /// Every failure is counted; the first of a run of them is a warning.
    pub async fn watch(self: Arc<Self>, client: kube::Client, node: String) {
        let pods: kube::Api<Pod> = kube::Api::all(client);
        let selector = format!("spec.nodeName={node}");
        let config = watcher::Config::default().fields(&selector);
        let mut events = std::pin::pin!(watcher::watcher(pods, config));
        let mut retry = Retry::default();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    // Each retry begins with `Init`, before its list can fail: not a recovery.
                    if !matches!(event, Event::Init) {
                        retry.failures = 0;
                    }
                    self.apply(event);
                }
                Err(error) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    if retry.failures == 0 {
                        tracing::warn!(%error, %node, "Kubernetes pod watch failed; retrying (pod names stay as last known)");
                    } else {
                        tracing::debug!(%error, "Kubernetes pod watch failed again");
                    }
                    tokio::time::sleep(retry.delay()).await;
                }
            }
        }
    }
}

/// Delays between failed lists and watches: 0.8 s doubling to 30 s, each cut by up to half at
/// random so that the agents of every node do not retry together after an API server outage.
/// Not kube's `default_backoff`: it restarts from its first delay at every `Ok` item, and each
/// retry yields `Init` before its list fails, so an API server that is down was asked about
/// once a second.
#[derive(Debug, Default)]
struct Retry {
    failures: u32,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(800);
    const MAX: Duration = Duration::from_secs(30);

    fn delay(&mut self) -> Duration {
        let full = Self::FIRST
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        full.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// The watched pods, once [`start`] has made a client.
static PODS: OnceLock<Arc<Pods>> = OnceLock::new();

/// The pod names for a process of pod `pod_uid` (see [`Pods::attributes`]); nothing when the
/// enrichment is off or the pod not known yet.
pub fn attributes(pod_uid: &str, container_id: Option<&str>) -> Vec<(&'static str, String)> {
    PODS.get()
        .map(|pods| pods.attributes(pod_uid, container_id))
        .unwrap_or_default()
}

/// The watched pods, when the enrichment is on (self-metrics).
pub fn watched() -> Option<&'static Arc<Pods>> {
    PODS.get()
}

/// Starts the watch of `node`'s pods: the in-cluster service account (or `KUBECONFIG`). A
/// client that cannot be made leaves the enrichment off with a warning and a counted error:
/// every other signal goes on. Returns the pods being watched and the watch to spawn.
pub async fn start(node: String) -> Option<(Arc<Pods>, impl Future<Output = ()> + Send + 'static)> {
    let pods = PODS.get_or_init(Default::default).clone();
    match client().await {
        Ok(client) => {
            tracing::info!(%node, "Kubernetes pod names on: watching this node's pods");
            Some((pods.clone(), pods.watch(client, node)))
        }
        Err(error) => {
            pods.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %error,
                "kubernetes.enabled but no Kubernetes API client could be made (no service \
                 account token mounted, or a bad KUBECONFIG): processes keep k8s.pod.uid only"
            );
            None
        }
    }
}

async fn client() -> Result<kube::Client, Box<dyn std::error::Error + Send + Sync>> {
    let config = kube::Config::infer().await?;
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests;
