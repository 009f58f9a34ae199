//! The pod watch against recorded API server responses. No API server can run on the test
//! machines (none is packaged for them), so a small HTTP server here answers as one does: a
//! `PodList`, then a watch whose events are newline-delimited JSON sent in chunks, and a watch
//! that expires with a 410 `ERROR` event. The client reaches it through a kubeconfig file, as
//! `KUBECONFIG` would give it.

use super::*;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

const WEB_UID: &str = "0b6f5f9e-1c1d-4c5e-9a7b-3f2e1d0c9b8a";
const DB_UID: &str = "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716";
const JOB_UID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const APP_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const PROXY_ID: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const DB_ID: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const SANDBOX_ID: &str = "4444444444444444444444444444444444444444444444444444444444444444";
const JOB_ID: &str = "5555555555555555555555555555555555555555555555555555555555555555";

/// A pod of node-1 as the API server writes it (list items carry no `kind`, as in a real
/// `PodList`; watch events add it). `containers`: `(name, started container id)`.
fn pod(uid: &str, name: &str, owner: (&str, &str), containers: &[(&str, Option<&str>)]) -> Value {
    let (kind, owner_name) = owner;
    let hash = owner_name
        .rsplit_once('-')
        .map(|(_, h)| h)
        .unwrap_or_default();
    let labels = match kind {
        "ReplicaSet" => json!({"app": "web", "pod-template-hash": hash}),
        _ => json!({"app": name}),
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, id)| {
            let mut status = json!({"name": name, "image": "img", "imageID": "", "ready": id.is_some(), "restartCount": 0});
            if let Some(id) = id {
                status["containerID"] = json!(format!("containerd://{id}"));
            }
            status
        })
        .collect();
    json!({
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid, "resourceVersion": "9",
            "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": owner_name,
                                 "uid": "00000000-0000-4000-8000-000000000000",
                                 "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": "node-1",
            "containers": containers.iter().map(|(n, _)| json!({"name": n, "image": "img"})).collect::<Vec<_>>()
        },
        "status": {"phase": "Running", "containerStatuses": statuses}
    })
}

fn web(proxy_started: bool) -> Value {
    let proxy = proxy_started.then_some(PROXY_ID);
    let containers = [("app", Some(APP_ID)), ("proxy", proxy)];
    pod(
        WEB_UID,
        "web-7d4b9c8f5d-x2x9k",
        ("ReplicaSet", "web-7d4b9c8f5d"),
        &containers,
    )
}

/// A one-container pod, before and after the kubelet reported its container.
fn db(started: bool) -> Value {
    let id = started.then_some(DB_ID);
    pod(DB_UID, "db-0", ("StatefulSet", "db"), &[("postgres", id)])
}

fn migrate() -> Value {
    pod(
        JOB_UID,
        "migrate-x7k2p",
        ("Job", "migrate"),
        &[("migrate", Some(JOB_ID))],
    )
}

fn pod_list(resource_version: &str, items: &[Value]) -> String {
    json!({"apiVersion": "v1", "kind": "PodList",
           "metadata": {"resourceVersion": resource_version}, "items": items})
    .to_string()
}

fn event(kind: &str, mut object: Value, resource_version: &str) -> String {
    object["apiVersion"] = json!("v1");
    object["kind"] = json!("Pod");
    object["metadata"]["resourceVersion"] = json!(resource_version);
    json!({"type": kind, "object": object}).to_string()
}

/// What the API server sends when the watch's resource version is older than it keeps.
fn expired(resource_version: &str) -> String {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": format!("too old resource version: {resource_version} (25)"),
        "reason": "Expired", "code": 410}})
    .to_string()
}

/// One request of the client, answered by the test.
struct Request {
    target: String,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    List(String),
    /// A watch: each line received is sent as one chunk, until the sender is dropped.
    Watch(mpsc::UnboundedReceiver<String>),
}

impl Request {
    /// The request target with its query percent-decoded where it matters here.
    fn query(&self) -> String {
        self.target.replace("%3D", "=")
    }
}

async fn serve(listener: TcpListener, requests: mpsc::UnboundedSender<Request>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(answer(stream, requests.clone()));
    }
}

/// Reads one request head, hands it to the test, writes its reply and closes the connection.
async fn answer(mut stream: TcpStream, requests: mpsc::UnboundedSender<Request>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let target = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let (reply, replied) = oneshot::channel();
    if requests.send(Request { target, reply }).is_err() {
        return;
    }
    let common = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n";
    let _ = match replied.await {
        Ok(Reply::List(body)) => {
            let response = format!("{common}Content-Length: {}\r\n\r\n{body}", body.len());
            stream.write_all(response.as_bytes()).await
        }
        Ok(Reply::Watch(mut lines)) => {
            let head = format!("{common}Transfer-Encoding: chunked\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            while let Some(line) = lines.recv().await {
                let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            stream.write_all(b"0\r\n\r\n").await
        }
        Err(_) => return,
    };
}

/// A client of the server at `url`, read from a kubeconfig file written for it.
async fn client_from_kubeconfig(url: &str) -> kube::Client {
    let path = std::env::temp_dir().join(format!("periscope-kubeconfig-{}", std::process::id()));
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: mock\n\
         clusters: [{{name: mock, cluster: {{server: \"{url}\"}}}}]\n\
         users: [{{name: mock, user: {{token: t0ken}}}}]\n\
         contexts: [{{name: mock, context: {{cluster: mock, user: mock}}}}]\n"
    );
    std::fs::write(&path, kubeconfig).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

const PATIENCE: Duration = Duration::from_secs(15);

async fn next_request(requests: &mut mpsc::UnboundedReceiver<Request>) -> Request {
    tokio::time::timeout(PATIENCE, requests.recv())
        .await
        .expect("the client made no request in time")
        .expect("the server stopped")
}

/// Waits until `pods` satisfy `condition` (the watch applies events on its own task).
async fn until(pods: &Pods, what: &str, condition: impl Fn(&Pods) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition(pods) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names<'a>(attributes: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    attributes.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_follows_adds_changes_deletes_and_relists_after_it_expires() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (requests_tx, mut requests) = mpsc::unbounded_channel();
    let server = tokio::spawn(serve(listener, requests_tx));
    let pods = Arc::new(Pods::default());
    let client = client_from_kubeconfig(&url).await;
    let watch = tokio::spawn(pods.clone().watch(client, "node-1".into()));

    // The first list: this node's pods only.
    let list = next_request(&mut requests).await;
    assert!(list.target.starts_with("/api/v1/pods?"), "{}", list.target);
    assert!(
        list.query().contains("fieldSelector=spec.nodeName=node-1"),
        "{}",
        list.target
    );
    assert!(!list.query().contains("watch=true"), "{}", list.target);
    let _ = list.reply.send(Reply::List(pod_list("10", &[web(false)])));
    assert!(pods.wait_synced(PATIENCE).await);
    assert_eq!(
        names(&pods.attributes(WEB_UID, Some(APP_ID))),
        [
            ("k8s.pod.name", "web-7d4b9c8f5d-x2x9k"),
            ("k8s.namespace.name", "shop"),
            ("k8s.container.name", "app"),
            ("k8s.deployment.name", "web"),
            ("k8s.replicaset.name", "web-7d4b9c8f5d"),
        ]
    );
    // A container the kubelet has not reported: the pod's names without the container's.
    let proxy = pods.attributes(WEB_UID, Some(PROXY_ID));
    assert!(
        !proxy.iter().any(|(k, _)| *k == attr::K8S_CONTAINER_NAME),
        "{proxy:?}"
    );

    // The watch, from the list's resource version.
    let watch_request = next_request(&mut requests).await;
    let query = watch_request.query();
    assert!(
        query.contains("watch=true") && query.contains("resourceVersion=10"),
        "{query}"
    );
    assert!(
        query.contains("fieldSelector=spec.nodeName=node-1"),
        "{query}"
    );
    let (events, lines) = mpsc::unbounded_channel();
    let _ = watch_request.reply.send(Reply::Watch(lines));

    events.send(event("ADDED", db(false), "11")).unwrap();
    until(&pods, "db-0 added", |p| {
        !p.attributes(DB_UID, None).is_empty()
    })
    .await;
    assert_eq!(
        names(&pods.attributes(DB_UID, Some(DB_ID))),
        [
            ("k8s.pod.name", "db-0"),
            ("k8s.namespace.name", "shop"),
            ("k8s.container.name", "postgres"),
            ("k8s.statefulset.name", "db"),
        ],
        "a pod's only container is named before the kubelet reports its id"
    );
    events.send(event("MODIFIED", db(true), "12")).unwrap();
    until(&pods, "db-0's container reported", |p| {
        !p.attributes(DB_UID, Some(SANDBOX_ID))
            .iter()
            .any(|(k, _)| *k == attr::K8S_CONTAINER_NAME)
    })
    .await;
    assert!(
        pods.attributes(DB_UID, Some(DB_ID))
            .contains(&(attr::K8S_CONTAINER_NAME, "postgres".into())),
        "then only the reported id is the container, not the pod sandbox's"
    );

    events.send(event("MODIFIED", web(true), "13")).unwrap();
    until(&pods, "web's proxy container reported", |p| {
        p.attributes(WEB_UID, Some(PROXY_ID))
            .contains(&(attr::K8S_CONTAINER_NAME, "proxy".into()))
    })
    .await;

    events.send(event("DELETED", web(true), "14")).unwrap();
    until(&pods, "web deleted", |p| {
        p.attributes(WEB_UID, Some(APP_ID)).is_empty()
    })
    .await;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods.errors(), 0);

    // The watch expires; meanwhile db-0 was deleted and migrate added, unseen by any event.
    events.send(expired("14")).unwrap();
    let relist = next_request(&mut requests).await;
    assert!(
        !relist.query().contains("watch=true"),
        "a 410 must relist: {}",
        relist.target
    );
    assert!(
        relist
            .query()
            .contains("fieldSelector=spec.nodeName=node-1")
    );
    assert_eq!(pods.errors(), 1, "the expired watch is counted");
    let _ = relist.reply.send(Reply::List(pod_list("20", &[migrate()])));
    until(&pods, "the relist replaced the pods", |p| {
        p.len() == 1 && p.attributes(DB_UID, None).is_empty()
    })
    .await;
    assert_eq!(
        names(&pods.attributes(JOB_UID, Some(JOB_ID))),
        [
            ("k8s.pod.name", "migrate-x7k2p"),
            ("k8s.namespace.name", "shop"),
            ("k8s.container.name", "migrate"),
            ("k8s.job.name", "migrate"),
        ]
    );
    assert!(pods.attributes(WEB_UID, Some(APP_ID)).is_empty());

    // And it watches again from the new list.
    let rewatch = next_request(&mut requests).await;
    assert!(
        rewatch.query().contains("watch=true") && rewatch.query().contains("resourceVersion=20")
    );
    watch.abort();
    server.abort();
}

#[test]
fn workloads_come_from_the_controller_reference() {
    let named = |p: &Value| workload(&serde_json::from_value(p.clone()).unwrap());
    let ds = pod(DB_UID, "agent-x", ("DaemonSet", "agent"), &[("a", None)]);
    assert_eq!(
        named(&ds),
        [(attr::K8S_DAEMONSET_NAME, "agent".to_string())]
    );
    // A ReplicaSet no Deployment made (no pod-template-hash label): the ReplicaSet only.
    let mut bare = web(false);
    bare["metadata"]["labels"] = json!({});
    assert_eq!(
        named(&bare),
        [(attr::K8S_REPLICASET_NAME, "web-7d4b9c8f5d".to_string())]
    );
    // An owner that is not the controller names nothing.
    let mut adopted = db(false);
    adopted["metadata"]["ownerReferences"][0]["controller"] = json!(false);
    assert!(named(&adopted).is_empty());
    let mut orphan = db(false);
    orphan["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    assert!(named(&orphan).is_empty());
}

#[test]
fn container_ids_lose_their_runtime_scheme() {
    for scheme in ["containerd", "cri-o", "docker"] {
        let status = ContainerStatus {
            name: "app".into(),
            container_id: Some(format!("{scheme}://{APP_ID}")),
            ..Default::default()
        };
        assert_eq!(container_id(&status), Some((APP_ID.into(), "app".into())));
    }
    let waiting = ContainerStatus {
        name: "app".into(),
        container_id: Some(String::new()),
        ..Default::default()
    };
    assert_eq!(container_id(&waiting), None);
}

#[test]
fn retries_back_off_to_30_s_with_jitter() {
    let mut retry = Retry::default();
    let delays: Vec<Duration> = (0..10).map(|_| retry.delay()).collect();
    for (i, delay) in delays.iter().enumerate() {
        let full = (Retry::FIRST * 2u32.pow(i as u32)).min(Retry::MAX);
        assert!(
            *delay >= full / 2 && *delay <= full,
            "retry {i}: {delay:?} for {full:?}"
        );
    }
    assert!(delays[9] >= Duration::from_secs(15));
}

#[test]
fn a_pod_with_init_containers_has_no_sole_container() {
    let mut pod: Pod = serde_json::from_value(db(false)).unwrap();
    assert_eq!(sole_container(&pod).as_deref(), Some("postgres"));
    let spec = pod.spec.as_mut().unwrap();
    spec.init_containers = Some(vec![k8s_openapi::api::core::v1::Container {
        name: "init".into(),
        ..Default::default()
    }]);
    assert_eq!(sole_container(&pod), None);
}
