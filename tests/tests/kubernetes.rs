//! Kubernetes identity from cgroup paths: an HTTP server that the test places in a cgroup v2
//! directory shaped as the kubelet (systemd driver) and containerd name a container's, so its
//! signals (HTTP and TCP metrics, run-queue latency) must carry that pod's `k8s.pod.uid` and
//! that `container.id` (OTLP resource), and
//! the node name from `K8S_NODE_NAME`; a client outside the cgroup must carry neither. On the
//! Prometheus endpoint the same attributes are the labels of the process's `target_info`
//! series (text and protobuf), which a real Prometheus joins to the HTTP series on
//! `service_instance_id`. No Kubernetes runs here: the path is all Periscope reads of a pod,
//! and the path is real. With `kubernetes.enabled`, a stand-in for the API server lists that
//! pod, and its names join the resource.

use std::time::Duration;

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{KeyValue, any_value},
};
use periscope_e2e::{
    cgroup::KubeCgroup,
    daemon::Daemon,
    exclusive, free_port,
    http::{SERVER, Server, client_counts, periscope_counts, plan, python_client},
    otlp_receiver::OtlpReceiver,
    prometheus::Prometheus,
    scrape::Scrape,
    wait_for,
};

const NODE: &str = "e2e-node-1";

/// HTTP, TCP and per-cgroup run-queue latency, OTLP every second.
const CONFIG: &str = "probes:\n  block:\n    enabled: false\n  sched:\n    by_cgroup: true\n  syscall:\n    enabled: false\notlp:\n  interval: 1s\n";

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// The resource attributes of every resource in `request` that carries the metric `name`.
fn resources_with(request: &ExportMetricsServiceRequest, name: &str) -> Vec<Vec<KeyValue>> {
    request
        .resource_metrics
        .iter()
        .filter(|r| {
            r.scope_metrics
                .iter()
                .flat_map(|s| &s.metrics)
                .any(|m| m.name == name)
        })
        .filter_map(|r| r.resource.as_ref().map(|r| r.attributes.clone()))
        .collect()
}

#[test]
fn a_server_in_a_kubelet_shaped_cgroup_carries_its_pod_uid_and_container_id() {
    let _machine = exclusive();
    let receiver = OtlpReceiver::start();
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let daemon = Daemon::start(
        CONFIG,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("K8S_NODE_NAME", NODE),
        ],
    );
    // Declared before the server: dropped after it, once the cgroup is empty again.
    let cgroup = KubeCgroup::burstable_containerd();
    let port = free_port();
    let mut command = Server::python_command(port, true, None, "pod-api");
    cgroup.place(&mut command);
    let server = Server::spawn(command, port, None);
    let in_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid()))
        .expect("read the server's /proc/PID/cgroup");
    assert!(
        in_cgroup.lines().any(|l| l.ends_with(&cgroup.path)),
        "the server is not in {}: {in_cgroup}",
        cgroup.path
    );

    let sent = python_client(port, true, &plan(3));
    let expected = client_counts(&sent);
    wait_for("every request counted", Duration::from_secs(15), || {
        (periscope_counts(&daemon.scrape(), SERVER, port) == expected).then_some(())
    });

    let pid = server.pid().to_string();
    let server_resource = wait_for(
        "an OTLP export with the server's HTTP metrics",
        Duration::from_secs(20),
        || {
            receiver.requests().iter().rev().find_map(|r| {
                resources_with(r, "http.server.request.duration")
                    .into_iter()
                    .find(|a| attr(a, "process.pid") == Some(pid.as_str()))
            })
        },
    );
    assert_eq!(
        attr(&server_resource, "k8s.pod.uid"),
        Some(cgroup.pod_uid.as_str())
    );
    assert_eq!(
        attr(&server_resource, "container.id"),
        Some(cgroup.container_id.as_str())
    );
    assert_eq!(
        attr(&server_resource, "container.runtime.name"),
        Some("containerd")
    );
    assert_eq!(attr(&server_resource, "k8s.node.name"), Some(NODE));
    assert_eq!(attr(&server_resource, "service.name"), Some("pod-api"));

    // The TCP family reads the same process: its connections carry the same pod.
    let tcp_resource = wait_for(
        "an OTLP export with the server's TCP connections",
        Duration::from_secs(20),
        || {
            receiver.requests().iter().rev().find_map(|r| {
                resources_with(r, "kernel.tcp.connections")
                    .into_iter()
                    .find(|a| attr(a, "process.pid") == Some(pid.as_str()))
            })
        },
    );
    for key in [
        "k8s.pod.uid",
        "container.id",
        "container.runtime.name",
        "k8s.node.name",
    ] {
        assert_eq!(
            attr(&tcp_resource, key),
            attr(&server_resource, key),
            "{key} on the TCP resource"
        );
    }

    // The client ran outside any container: a node name, no pod, no container.
    let last = receiver.requests().last().cloned().expect("a request");
    let clients = resources_with(&last, "http.client.request.duration");
    assert!(!clients.is_empty(), "no client-side resource exported");
    for client in &clients {
        assert_eq!(attr(client, "k8s.node.name"), Some(NODE));
        assert_eq!(attr(client, "k8s.pod.uid"), None, "{client:?}");
        assert_eq!(attr(client, "container.id"), None, "{client:?}");
    }

    // The server ran in its cgroup, so run-queue latency has a series for it, with the pod.
    let cgroup_path = cgroup.path.clone();
    let sched = wait_for(
        "a run-queue series for the test cgroup",
        Duration::from_secs(10),
        || {
            daemon.scrape_text().samples.into_iter().find(|s| {
                s.name == "kernel_sched_runqueue_latency_seconds_count"
                    && s.labels.get("cgroup_path") == Some(&cgroup_path)
            })
        },
    );
    assert_eq!(
        sched.labels.get("k8s_pod_uid"),
        Some(&cgroup.pod_uid),
        "{sched:?}"
    );
    assert_eq!(sched.labels.get("container_id"), Some(&cgroup.container_id));

    prometheus_target_info_names_the_pod(&daemon, &cgroup, port, sent.len());
    drop(server);
}

/// The server's `target_info` in both encodings, and the join a Prometheus-only user writes.
fn prometheus_target_info_names_the_pod(
    daemon: &Daemon,
    cgroup: &KubeCgroup,
    port: u16,
    requests: usize,
) {
    let port_label = port.to_string();
    let instance = |scrape: &Scrape| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.name == format!("{SERVER}_count")
                    && s.labels.get("server_port") == Some(&port_label)
            })
            .and_then(|s| s.labels.get("service_instance_id").cloned())
            .expect("the server's series carry service_instance_id")
    };
    for (encoding, scrape) in [
        ("protobuf", daemon.scrape()),
        ("text", daemon.scrape_text()),
    ] {
        let instance = instance(&scrape);
        let infos: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.name == "target_info" && s.labels.get("service_instance_id") == Some(&instance)
            })
            .collect();
        assert_eq!(
            infos.len(),
            1,
            "{encoding}: target_info of {instance}: {infos:?}"
        );
        let label = |k: &str| infos[0].labels.get(k).map(String::as_str);
        assert_eq!(
            label("k8s_pod_uid"),
            Some(cgroup.pod_uid.as_str()),
            "{encoding}"
        );
        assert_eq!(
            label("container_id"),
            Some(cgroup.container_id.as_str()),
            "{encoding}"
        );
        assert_eq!(
            label("container_runtime_name"),
            Some("containerd"),
            "{encoding}"
        );
        assert_eq!(label("k8s_node_name"), Some(NODE), "{encoding}");
        assert_eq!(label("service_name"), Some("pod-api"), "{encoding}");
        assert_eq!(infos[0].value, 1.0);
    }

    let prometheus = Prometheus::start(daemon.port, &[]);
    let join = format!(
        "sum by (k8s_pod_uid, container_id) (http_server_request_duration_seconds_count{{server_port=\"{port}\"}} \
         * on (service_instance_id) group_left (k8s_pod_uid, container_id) target_info)"
    );
    let joined = wait_for(
        "the join answers every request",
        Duration::from_secs(20),
        || {
            let samples = prometheus.query(&join);
            (samples.len() == 1 && samples[0].value == requests as f64).then_some(samples)
        },
    );
    let label = |k: &str| joined[0].labels.get(k).and_then(|v| v.as_str());
    assert_eq!(label("k8s_pod_uid"), Some(cgroup.pod_uid.as_str()));
    assert_eq!(label("container_id"), Some(cgroup.container_id.as_str()));
}

/// A stand-in for the API server (none is packaged for the test machines): it answers a list of
/// pods with `pod_list` and keeps every watch open with no event; it records each request target.
fn api_server(pod_list: String) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the API stand-in");
    let port = listener.local_addr().expect("its address").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let requests = seen.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let (pod_list, requests) = (pod_list.clone(), requests.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
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
                let watch = target.contains("watch=true");
                requests.lock().unwrap().push(target);
                let common =
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n";
                if watch {
                    let _ = stream.write_all(
                        format!("{common}Transfer-Encoding: chunked\r\n\r\n").as_bytes(),
                    );
                    // An open watch with nothing to say, until the test process ends.
                    std::thread::sleep(Duration::from_secs(600));
                } else {
                    let response = format!(
                        "{common}Content-Length: {}\r\n\r\n{pod_list}",
                        pod_list.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                }
            });
        }
    });
    (port, seen)
}

/// With `kubernetes.enabled`, the pod the API server lists for the server's cgroup names it:
/// pod, namespace, container and Deployment on its resource (`target_info` here), from a list
/// asked for this node's pods only.
#[test]
fn a_pod_the_api_server_lists_gets_its_names() {
    let _machine = exclusive();
    // Created before the daemon: its uid and container id go into the API's answer.
    let cgroup = KubeCgroup::burstable_containerd();
    let pod = serde_json::json!({
        "metadata": {
            "name": "pod-api-5f6d7c8b9a-q2w3e", "namespace": "shop", "uid": cgroup.pod_uid,
            "resourceVersion": "7", "labels": {"pod-template-hash": "5f6d7c8b9a"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "pod-api-5f6d7c8b9a", "uid": "00000000-0000-4000-8000-000000000000",
                "controller": true}]
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "api"}, {"name": "sidecar"}]},
        "status": {"containerStatuses": [
            {"name": "api", "containerID": format!("containerd://{}", cgroup.container_id),
             "image": "api", "imageID": "", "ready": true, "restartCount": 0}
        ]}
    });
    let list = serde_json::json!({"apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "7"}, "items": [pod]});
    let (api_port, requests) = api_server(list.to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: e2e\n\
             clusters: [{{name: e2e, cluster: {{server: \"http://127.0.0.1:{api_port}\"}}}}]\n\
             users: [{{name: e2e, user: {{token: e2e}}}}]\n\
             contexts: [{{name: e2e, context: {{cluster: e2e, user: e2e}}}}]\n"
        ),
    )
    .expect("write the kubeconfig");
    let daemon = Daemon::start(
        CONFIG,
        &[
            ("K8S_NODE_NAME", NODE),
            ("PERISCOPE_KUBERNETES_ENABLED", "true"),
            ("KUBECONFIG", kubeconfig.to_str().expect("a UTF-8 path")),
        ],
    );
    let port = free_port();
    let mut command = Server::python_command(port, true, None, "pod-api");
    cgroup.place(&mut command);
    let server = Server::spawn(command, port, None);
    let sent = python_client(port, true, &plan(2));
    let expected = client_counts(&sent);
    wait_for("every request counted", Duration::from_secs(15), || {
        (periscope_counts(&daemon.scrape(), SERVER, port) == expected).then_some(())
    });

    let port_label = port.to_string();
    let scrape = daemon.scrape_text();
    let instance = scrape
        .samples
        .iter()
        .find(|s| {
            s.name == format!("{SERVER}_count") && s.labels.get("server_port") == Some(&port_label)
        })
        .and_then(|s| s.labels.get("service_instance_id").cloned())
        .expect("the server's series carry service_instance_id");
    let info = scrape
        .samples
        .iter()
        .find(|s| s.name == "target_info" && s.labels.get("service_instance_id") == Some(&instance))
        .expect("the server's target_info");
    let label = |k: &str| info.labels.get(k).map(String::as_str);
    assert_eq!(label("k8s_pod_uid"), Some(cgroup.pod_uid.as_str()));
    assert_eq!(
        label("k8s_pod_name"),
        Some("pod-api-5f6d7c8b9a-q2w3e"),
        "{info:?}"
    );
    assert_eq!(label("k8s_namespace_name"), Some("shop"));
    assert_eq!(label("k8s_container_name"), Some("api"));
    assert_eq!(label("k8s_deployment_name"), Some("pod-api"));
    assert_eq!(label("k8s_replicaset_name"), Some("pod-api-5f6d7c8b9a"));
    let pods = scrape
        .samples
        .iter()
        .find(|s| s.name == "periscope_kubernetes_pods")
        .map(|s| s.value);
    assert_eq!(pods, Some(1.0));

    let requests = requests.lock().unwrap().clone();
    assert!(
        requests.iter().all(|r| r
            .replace("%3D", "=")
            .contains(&format!("fieldSelector=spec.nodeName={NODE}"))),
        "every list and watch asks for this node's pods only: {requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.contains("watch=true")),
        "{requests:?}"
    );
    drop(server);
}
