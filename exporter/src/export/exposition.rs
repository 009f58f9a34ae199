//! What the scrape formats (the OpenMetrics text of `openmetrics.rs`, the protobuf of
//! `protobuf.rs`) share: metric families and their Prometheus names, the labels of a series,
//! the `target_info` series, and how exemplar ids are written.

use std::{collections::HashSet, fmt::Write};

use crate::{
    model::metrics::{Metric, Points, Resource, sanitize},
    model::resource::ProcessResource,
};

/// Metrics of several processes share a name: one family each, in first-seen order.
pub(crate) fn families(snapshot: &[Metric]) -> Vec<Vec<&Metric>> {
    let mut families: Vec<Vec<&Metric>> = Vec::new();
    for metric in snapshot {
        match families
            .iter_mut()
            .find(|group| group[0].name == metric.name)
        {
            Some(group) => group.push(metric),
            None => families.push(vec![metric]),
        }
    }
    families
}

/// The family name: the OTel name with dots as underscores, the unit appended (`_seconds`,
/// `_bytes`), and `_total` for counters when `counter_total` (the protobuf format names the
/// counter family with it, the text format only its sample).
pub(crate) fn family_name(metric: &Metric, counter_total: bool) -> String {
    let mut name = metric.prometheus_name();
    if let Some(unit) = unit_suffix(metric.unit) {
        name.push('_');
        name.push_str(unit);
    }
    if counter_total && matches!(metric.points, Points::Counter(_)) {
        name.push_str("_total");
    }
    name
}

pub(crate) fn unit_suffix(unit: &str) -> Option<&'static str> {
    match unit {
        "s" => Some("seconds"),
        "By" => Some("bytes"),
        _ => None,
    }
}

/// Resource attributes of an observed process that become labels (the rest stay in OTLP):
/// enough to tell services and their instances apart.
const RESOURCE_LABELS: [&str; 2] = ["service.name", "service.instance.id"];

pub(crate) fn labels_of(
    metric: &Metric,
    attributes: &[(&'static str, String)],
) -> Vec<(String, String)> {
    let resource = metric.resource.iter().flat_map(|r| {
        r.attributes
            .iter()
            .filter(|(k, _)| RESOURCE_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (sanitize(k), v.clone()))
    });
    resource
        .chain(attributes.iter().map(|(k, v)| (sanitize(k), v.clone())))
        .collect()
}

/// The label sets of the `target_info` series, per the OTel-to-Prometheus compatibility spec:
/// the node agent's own resource first, then one per observed process resource that a series
/// of `snapshot` belongs to, each resource attribute a label (`k8s.pod.uid` ->
/// `k8s_pod_uid`). The scraper's `job` and `instance` name the Periscope endpoint, so a
/// process's `service_name` and `service_instance_id` stay labels: they are the ones its series
/// carry, the key to join on. Two resources with the same attributes (two families that read
/// the same process) are one series: a scrape must not repeat a label set.
pub(crate) fn target_infos(agent: &Resource, snapshot: &[Metric]) -> Vec<Vec<(String, String)>> {
    let labels = |attributes: &[(String, String)]| {
        attributes
            .iter()
            .map(|(k, v)| (sanitize(k), v.clone()))
            .collect::<Vec<_>>()
    };
    let mut seen: HashSet<&ProcessResource> = HashSet::new();
    let processes = snapshot
        .iter()
        .filter_map(|m| m.resource.as_deref())
        .filter(|resource| seen.insert(resource))
        .map(|resource| labels(&resource.attributes));
    std::iter::once(labels(&agent.attributes))
        .chain(processes)
        .collect()
}

pub(crate) const TARGET_INFO: &str = "target_info";
pub(crate) const TARGET_INFO_HELP: &str = "Target metadata";

/// Whether classic buckets are the pre-layout sparse kernel buckets: only for the benchmark,
/// which measures both outputs in one run (`PERISCOPE_SPARSE_CLASSIC=1`). Never for real use:
/// series would get different `le` sets, which is what the fixed layouts fix.
pub(crate) static SPARSE_CLASSIC: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var("PERISCOPE_SPARSE_CLASSIC").is_ok_and(|v| v == "1"));

/// Trace and span ids as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
