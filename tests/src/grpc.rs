//! gRPC workloads for the end-to-end tests: the servers and clients of
//! `tests/workloads/grpc_*.py` (Python `grpcio`) and `tests/workloads/grpc_*.js` (Node.js
//! `@grpc/grpc-js`), the same service and modes in both (raw bytes, no generated code, h2c),
//! what a client counted, and Periscope's RPC counts from a scrape.

use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Duration};

use crate::{
    http::{Server, workload},
    scrape::Scrape,
};

/// (rpc.service, rpc.method, rpc.grpc.status_code) -> calls.
pub type RpcCounts = BTreeMap<(String, String, String), u64>;

pub const SERVER: &str = "rpc_server_call_duration_seconds";
pub const CLIENT: &str = "rpc_client_call_duration_seconds";

/// Which gRPC implementation a peer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// PyPI `grpcio`, which `.ci/setup.sh` installs into `target/grpc-python` (PYTHONPATH).
    Python,
    /// npm `@grpc/grpc-js`, which `.ci/setup.sh` installs into `target/grpc-node` (NODE_PATH).
    Node,
}

impl Runtime {
    /// `grpc_{name}.py` or `grpc_{name}.js` with its interpreter and its library's path.
    fn command(self, name: &str) -> Command {
        let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
        let mut c;
        match self {
            Self::Python => {
                c = Command::new("python3");
                c.arg(workload(&format!("grpc_{name}.py")))
                    .env("PYTHONPATH", target.join("grpc-python"));
            }
            Self::Node => {
                c = Command::new("node");
                c.arg(workload(&format!("grpc_{name}.js")))
                    .env("NODE_PATH", target.join("grpc-node/node_modules"));
            }
        }
        c
    }

    /// `server PORT`: `demo.Greeter` (SayHello unary, ListFeatures server streaming).
    pub fn server(self, port: u16) -> Server {
        let mut c = self.command("server");
        c.arg(port.to_string()).env("OTEL_SERVICE_NAME", "grpc-api");
        Server::spawn(c, port, None)
    }

    /// `client PORT MODE` (`mixed` or `concurrent`), to its end.
    pub fn client(self, port: u16, mode: &str) -> ClientRun {
        self.client_for(port, mode, Duration::ZERO)
    }

    /// [`Runtime::client`], repeating its calls on its one channel until `at_least` has passed
    /// (`mixed`).
    pub fn client_for(self, port: u16, mode: &str, at_least: Duration) -> ClientRun {
        let mut c = self.client_command(port, mode);
        c.arg(at_least.as_secs_f64().to_string());
        ClientRun::of(self, mode, c)
    }

    /// `client PORT MODE`, not started.
    fn client_command(self, port: u16, mode: &str) -> Command {
        let mut c = self.command("client");
        c.arg(port.to_string()).arg(mode);
        c
    }
}

/// The Python `grpc_server.py PORT`.
pub fn server(port: u16) -> Server {
    Runtime::Python.server(port)
}

/// The Node.js `grpc_server.js PORT`.
pub fn node_server(port: u16) -> Server {
    Runtime::Node.server(port)
}

/// What one run of a gRPC client (`grpc_client.py` or `grpc_client.js`) did.
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

/// The Python `grpc_client.py PORT MODE` (`mixed` or `concurrent`), to its end.
pub fn client(port: u16, mode: &str) -> ClientRun {
    Runtime::Python.client(port, mode)
}

/// [`client`], repeating its calls on its one channel until `at_least` has passed (`mixed`).
pub fn client_for(port: u16, mode: &str, at_least: Duration) -> ClientRun {
    Runtime::Python.client_for(port, mode, at_least)
}

/// [`client`], every call sending `traceparent` as its metadata (`GRPC_TRACEPARENT`).
pub fn client_traced(port: u16, mode: &str, traceparent: &str) -> ClientRun {
    let mut c = Runtime::Python.client_command(port, mode);
    c.env("GRPC_TRACEPARENT", traceparent);
    ClientRun::of(Runtime::Python, mode, c)
}

/// The Node.js `grpc_client.js PORT MODE` (`mixed` or `concurrent`), to its end.
pub fn node_client(port: u16, mode: &str) -> ClientRun {
    Runtime::Node.client(port, mode)
}

/// The Python client in `midway` mode: calls made on its one connection, then `between` (which
/// starts Periscope), then the calls that count, on the same connection.
pub fn midway_client(port: u16, between: impl FnOnce()) -> ClientRun {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut command = Runtime::Python.client_command(port, "midway");
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn().expect("python3 grpc_client.py");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("the client's ready line");
    assert_eq!(line.trim(), "ready", "grpc_client.py midway");
    between();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("to the client");
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("the client's JSON");
    let status = child.wait().expect("grpc_client.py");
    assert!(status.success(), "grpc_client.py midway: {status}");
    ClientRun::parse(Runtime::Python, &rest)
}

impl ClientRun {
    /// Runs a client `command` to its end and reads its JSON.
    fn of(runtime: Runtime, mode: &str, mut command: Command) -> Self {
        let out = command.output().unwrap_or_else(|e| {
            panic!("{runtime:?} gRPC client {command:?} ({e}): make test installs its library")
        });
        assert!(
            out.status.success(),
            "{runtime:?} gRPC client {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::parse(runtime, &out.stdout)
    }

    /// A client's JSON output.
    fn parse(runtime: Runtime, stdout: &[u8]) -> Self {
        let value: serde_json::Value = serde_json::from_slice(stdout).unwrap_or_else(|e| {
            panic!(
                "{runtime:?} gRPC client output is not JSON ({e}): {}",
                String::from_utf8_lossy(stdout)
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
        Self {
            calls,
            messages: value["messages"].as_u64().expect("messages"),
            elapsed_s: value["elapsed_s"].as_f64().expect("elapsed_s"),
            connections: value["connections"].as_u64().expect("connections"),
        }
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
