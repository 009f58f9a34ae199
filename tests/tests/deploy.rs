//! deploy/: the Kubernetes manifests and the Helm chart's rendered output against the Kubernetes
//! JSON schemas, the daemon run with the container's and the systemd unit's privileges, the
//! systemd unit through `systemd-analyze`, the collector config and the compose stack.
//!
//! No Kubernetes cluster, Docker engine or systemd as PID 1 exists on the test machines: the
//! checks are static except where the real daemon can run with the same configuration and
//! privileges. The work is in `deploy/validate/validate.py` (its docstring says what each
//! subcommand proves); these tests run it with the pinned packages .ci/setup.sh installs into
//! target/deploy-venv.

use std::{path::PathBuf, process::Command};

use periscope_e2e::{exclusive, periscope_bin};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validate(subcommand: &str, with_binary: bool) -> String {
    let python = root().join("target/deploy-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run .ci/setup.sh (make test does)",
        python.display()
    );
    let mut command = Command::new(python);
    command
        .arg(root().join("deploy/validate/validate.py"))
        .arg(subcommand);
    if with_binary {
        command.arg(periscope_bin());
    }
    let out = command.output().expect("run deploy/validate/validate.py");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "validate.py {subcommand} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let out = validate("kubernetes", false);
    assert!(out.contains("valid against the strict Kubernetes"), "{out}");
    assert!(
        out.contains("a misspelt field and a wrong type are rejected"),
        "{out}"
    );
}

#[test]
fn helm_chart_renders_the_manifests_and_validates() {
    let out = validate("helm", false);
    assert!(
        out.contains("helm template (default values): 5 objects valid"),
        "{out}"
    );
    assert!(
        out.contains("renders the objects of deploy/kubernetes"),
        "{out}"
    );
    assert!(out.contains("values land where they should"), "{out}");
    assert!(out.contains("Helm rejects a misspelt key"), "{out}");
    assert!(
        out.contains("kubernetes.enabled renders a ClusterRole (list, watch pods)"),
        "{out}"
    );
}

/// The ConfigMap's periscope.yaml, the container's environment (downward API values filled
/// in) and only its capabilities: every enabled family attaches and /healthz answers.
#[test]
fn daemon_runs_with_the_kubernetes_config_and_capabilities() {
    let _machine = exclusive();
    let out = validate("kubernetes-live", true);
    assert!(
        out.contains("deploy/kubernetes: daemon with the ConfigMap's config"),
        "{out}"
    );
    assert!(
        out.contains("helm chart: daemon with the ConfigMap's config"),
        "{out}"
    );
}

/// `systemd-analyze verify` and `security --offline`, then the unit's uid, capabilities,
/// no_new_privs and syscall filter against what the real daemon does under strace.
#[test]
fn systemd_unit_verifies_and_its_privileges_run_the_daemon() {
    let _machine = exclusive();
    let out = validate("systemd", true);
    assert!(out.contains("systemd-analyze verify: clean"), "{out}");
    assert!(out.contains("all in SystemCallFilter"), "{out}");
}

#[test]
fn collector_config_pipelines_are_consistent() {
    let out = validate("collector", false);
    assert!(out.contains("traces -> Tempo"), "{out}");
    assert!(
        out.contains(
            "k8sattributes associates by k8s.pod.uid then container.id, filtered to the node"
        ),
        "{out}"
    );
    assert!(
        out.contains("read-only ClusterRole are valid and agree"),
        "{out}"
    );
}

#[test]
fn compose_stack_files_exist_and_line_up() {
    let out = validate("compose", false);
    assert!(out.contains("every mounted file exists"), "{out}");
}

#[test]
fn every_deployment_grants_the_documented_capabilities() {
    let out = validate("capabilities", false);
    assert!(out.contains("has one row each"), "{out}");
}
