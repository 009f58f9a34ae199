//! Kubernetes identity from cgroup paths: an HTTP server that the test places in a cgroup v2
//! directory shaped as the kubelet (systemd driver) and containerd name a container's, so its
//! signals must carry that pod's `k8s.pod.uid` and that `container.id` (OTLP resource), and
//! the node name from `K8S_NODE_NAME`; a client outside the cgroup must carry neither. No
//! Kubernetes runs here: the path is all Periscope reads of a pod, and the path is real.

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
    wait_for,
};

const NODE: &str = "e2e-node-1";

/// HTTP and per-cgroup run-queue latency, OTLP every second.
const CONFIG: &str = "probes:\n  block:\n    enabled: false\n  sched:\n    by_cgroup: true\n  syscall:\n    enabled: false\n  tcp:\n    enabled: false\notlp:\n  interval: 1s\n";

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
    drop(server);
}
