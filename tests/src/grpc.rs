//! gRPC workloads for the end-to-end tests: the Python `grpcio` server and client of
//! `tests/workloads/grpc_*.py` (generic handlers, h2c), what the client counted, and Periscope's
//! RPC counts from a scrape.

use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Duration};

use crate::{
    http::{Server, workload},
    scrape::Scrape,
};

/// (rpc.service, rpc.method, rpc.grpc.status_code) -> calls.
pub type RpcCounts = BTreeMap<(String, String, String), u64>;

pub const SERVER: &str = "rpc_server_call_duration_seconds";
pub const CLIENT: &str = "rpc_client_call_duration_seconds";

/// Where `.ci/setup.sh` installs grpcio (PYTHONPATH).
fn python_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/grpc-python")
}

fn python(script: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(workload(script)).env("PYTHONPATH", python_path());
    c
}

/// `grpc_server.py PORT`: `demo.Greeter` (SayHello unary, ListFeatures server streaming).
pub fn server(port: u16) -> Server {
    let mut c = python("grpc_server.py");
    c.arg(port.to_string()).env("OTEL_SERVICE_NAME", "grpc-api");
    Server::spawn(c, port, None)
}

/// What one run of `grpc_client.py` did.
#[derive(Debug)]
pub struct ClientRun {
    /// The calls that ended, by the status the client received.
    pub calls: RpcCounts,
    /// Streamed replies received.
    pub messages: u64,
    pub elapsed_s: f64,
    /// TCP connections to the server the channel had open.
    pub connections: u64,
}

/// `grpc_client.py PORT MODE` (`mixed` or `concurrent`), to its end.
pub fn client(port: u16, mode: &str) -> ClientRun {
    client_for(port, mode, Duration::ZERO)
}

/// [`client`], repeating its calls on its one channel until `at_least` has passed (`mixed`).
pub fn client_for(port: u16, mode: &str, at_least: Duration) -> ClientRun {
    run_client(port, mode, at_least, None)
}

/// [`client`], every call sending `traceparent` as its metadata.
pub fn client_traced(port: u16, mode: &str, traceparent: &str) -> ClientRun {
    run_client(port, mode, Duration::ZERO, Some(traceparent))
}

fn run_client(port: u16, mode: &str, at_least: Duration, traceparent: Option<&str>) -> ClientRun {
    let mut command = python("grpc_client.py");
    command
        .arg(port.to_string())
        .arg(mode)
        .arg(at_least.as_secs_f64().to_string());
    if let Some(traceparent) = traceparent {
        command.env("GRPC_TRACEPARENT", traceparent);
    }
    let out = command
        .output()
        .expect("python3 grpc_client.py (make test installs grpcio into target/grpc-python)");
    assert!(
        out.status.success(),
        "grpc_client.py {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "grpc_client.py output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let mut calls = RpcCounts::new();
    for c in value["calls"].as_array().expect("calls") {
        let key = (
            c["service"].as_str().expect("service").to_string(),
            c["method"].as_str().expect("method").to_string(),
            c["status"].as_u64().expect("status").to_string(),
        );
        *calls.entry(key).or_default() += c["count"].as_u64().expect("count");
    }
    ClientRun {
        calls,
        messages: value["messages"].as_u64().expect("messages"),
        elapsed_s: value["elapsed_s"].as_f64().expect("elapsed_s"),
        connections: value["connections"].as_u64().expect("connections"),
    }
}

/// Periscope's call counts of `metric` per (service, method, status) for one server port; a
/// call without a known status counts under status "".
pub fn periscope_counts(scrape: &Scrape, metric: &str, port: u16) -> RpcCounts {
    let mut counts = RpcCounts::new();
    let port = port.to_string();
    for s in &scrape.samples {
        if s.name != format!("{metric}_count") || s.labels.get("server_port") != Some(&port) {
            continue;
        }
        assert_eq!(
            s.labels.get("rpc_system").map(String::as_str),
            Some("grpc"),
            "{s:?}"
        );
        let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        *counts
            .entry((
                label("rpc_service"),
                label("rpc_method"),
                label("rpc_grpc_status_code"),
            ))
            .or_default() += s.value as u64;
    }
    counts
}
