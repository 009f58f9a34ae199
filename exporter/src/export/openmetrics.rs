//! The OpenMetrics text exposition of a snapshot: what `GET /metrics` answers by default.
//!
//! Written here rather than with prometheus-client because its exemplars can only be made by
//! observing values one at a time, while Periscope's histograms arrive already aggregated (from
//! the kernel, or from the HTTP tracker) with their exemplars. The format is small: families of
//! `# HELP/# TYPE/# UNIT` lines, one line per sample, `# EOF` at the end (OpenMetrics 1.0).
//!
//! Histograms are classic: every series of a metric has the same `le` set, the metric's
//! layout, whatever it observed. HTTP duration buckets carry the latest exemplar of a sampled
//! span that they count: `# {trace_id="…",span_id="…"} value timestamp`.

use std::{fmt::Write, sync::Arc};

use crate::{
    export::exposition::{
        SPARSE_CLASSIC, TARGET_INFO, TARGET_INFO_HELP, families, family_name, hex, labels_of,
        target_infos, unit_suffix,
    },
    model::histogram::{Exemplar, Histogram, ValueUnit},
    model::layout::Layout,
    model::metrics::{Metric, Points},
    telemetry::Telemetry,
};

pub fn render(telemetry: &Arc<Telemetry>, snapshot: &[Metric]) -> String {
    let mut out = String::with_capacity(64 * 1024);
    write_target_info(&mut out, &target_infos(&telemetry.resource, snapshot));
    for family in families(snapshot) {
        write_family(&mut out, &family, telemetry.layouts.of(family[0].name));
    }
    out.push_str("# EOF\n");
    out
}

/// The `target_info` family: one series of value 1 per resource (see `target_infos`).
fn write_target_info(out: &mut String, infos: &[Vec<(String, String)>]) {
    write_descriptor(out, TARGET_INFO, TARGET_INFO_HELP, "gauge", None);
    for labels in infos {
        write_line(out, TARGET_INFO, &label_prefix(labels), "1");
    }
}

fn write_family(out: &mut String, group: &[&Metric], layout: &Layout) {
    let first = group[0];
    let name = family_name(first, false);
    let kind = match first.points {
        Points::Histogram(..) => "histogram",
        Points::Counter(_) => "counter",
        Points::Gauge(_) => "gauge",
    };
    write_descriptor(out, &name, first.description, kind, unit_suffix(first.unit));
    for metric in group {
        match &metric.points {
            Points::Histogram(unit, points) => {
                for (attributes, histogram) in points {
                    let labels = label_prefix(&labels_of(metric, attributes));
                    write_histogram(out, &name, &labels, histogram, *unit, layout);
                }
            }
            Points::Counter(points) => {
                let total = format!("{name}_total");
                for (attributes, value) in points {
                    let labels = label_prefix(&labels_of(metric, attributes));
                    write_line(out, &total, &labels, &float(*value));
                }
            }
            Points::Gauge(points) => {
                for (attributes, value) in points {
                    let labels = label_prefix(&labels_of(metric, attributes));
                    write_line(out, &name, &labels, &float(*value));
                }
            }
        }
    }
}

fn write_descriptor(out: &mut String, name: &str, help: &str, kind: &str, unit: Option<&str>) {
    let _ = writeln!(out, "# HELP {name} {}", escape(help, false));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    if let Some(unit) = unit {
        let _ = writeln!(out, "# UNIT {name} {unit}");
    }
}

/// A series' labels, rendered once: `{a="1",b="2"` without the closing brace (a histogram adds
/// `le` to it per bucket), or empty when there are none.
fn label_prefix(labels: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        let _ = write!(out, "{k}=\"{}\"", escape(v, true));
    }
    out
}

/// One sample and its line end.
fn write_line(out: &mut String, name: &str, labels: &str, value: &str) {
    write_sample(out, name, labels, "", value);
    out.push('\n');
}

/// One sample, without its line end (an exemplar may follow); `extra` is one more rendered
/// label (`le="…"`) or empty.
fn write_sample(out: &mut String, name: &str, labels: &str, extra: &str, value: &str) {
    out.push_str(name);
    match (labels.is_empty(), extra.is_empty()) {
        (true, true) => {}
        (true, false) => {
            let _ = write!(out, "{{{extra}}}");
        }
        (false, true) => {
            let _ = write!(out, "{labels}}}");
        }
        (false, false) => {
            let _ = write!(out, "{labels},{extra}}}");
        }
    }
    out.push(' ');
    out.push_str(value);
}

fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    histogram: &Histogram,
    unit: ValueUnit,
    layout: &Layout,
) {
    let bucket = format!("{name}_bucket");
    if *SPARSE_CLASSIC {
        let mut total = 0;
        for (bound, count) in histogram.sparse_buckets(unit) {
            total += count;
            write_sample(out, &bucket, labels, &le(bound), &total.to_string());
            out.push('\n');
        }
    } else {
        let classic = histogram.classic(layout, unit);
        let exemplars = histogram.classic_exemplars(layout, unit);
        let bounds = layout.bounds().iter().copied().chain([f64::INFINITY]);
        for ((bound, total), exemplar) in bounds.zip(classic.cumulative()).zip(exemplars) {
            write_sample(out, &bucket, labels, &le(bound), &total.to_string());
            if let Some(exemplar) = exemplar {
                write_exemplar(out, &exemplar, unit);
            }
            out.push('\n');
        }
    }
    let count = format!("{name}_count");
    write_line(out, &count, labels, &histogram.count().to_string());
    let sum = format!("{name}_sum");
    write_line(out, &sum, labels, &float(histogram.sum_in(unit)));
}

fn le(bound: f64) -> String {
    format!("le=\"{}\"", float(bound))
}

/// ` # {trace_id="…",span_id="…"} value timestamp`, the timestamp in seconds with nanoseconds.
fn write_exemplar(out: &mut String, exemplar: &Exemplar, unit: ValueUnit) {
    let _ = write!(
        out,
        " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {}.{:09}",
        hex(&exemplar.trace_id),
        hex(&exemplar.span_id),
        float(exemplar.value as f64 * unit.scale()),
        exemplar.time_unix_ns / 1_000_000_000,
        exemplar.time_unix_ns % 1_000_000_000
    );
}

/// Numbers as OpenMetrics writes them: the shortest text that reads back to the same double
/// (`0.005`, `1e-6`, `10.0`), `+Inf`, `-Inf`, `NaN`. The same bound is always the same text,
/// so `le` values match across series.
pub(crate) fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v:?}")
    }
}

/// Label values escape `\`, `"` and newlines; help text `\` and newlines.
fn escape(text: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_common::hist::{ns_to_units, slot_of};

    fn histogram(values_ns: &[u64]) -> Histogram {
        let mut h = Histogram::default();
        for ns in values_ns {
            let units = ns_to_units(*ns);
            *h.counts.entry(slot_of(units)).or_default() += 1;
            h.sum += units;
        }
        h
    }

    #[test]
    fn every_series_gets_the_whole_layout_and_its_exemplars() {
        let layout = Layout::new(vec![0.005, 0.01, 0.025]).unwrap();
        let mut h = histogram(&[100_000, 7_000_000, 30_000_000]);
        h.exemplars.push(Exemplar {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            value: ns_to_units(7_000_000),
            time_unix_ns: 1_700_000_000_123_456_789,
        });
        let mut out = String::new();
        let labels = label_prefix(&[("http_route".into(), "/a\"b".into())]);
        write_histogram(
            &mut out,
            "d_seconds",
            &labels,
            &h,
            ValueUnit::Seconds,
            &layout,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "d_seconds_bucket{http_route=\"/a\\\"b\",le=\"0.005\"} 1"
        );
        let value = float(ns_to_units(7_000_000) as f64 * ValueUnit::Seconds.scale());
        assert_eq!(
            lines[1],
            format!(
                "d_seconds_bucket{{http_route=\"/a\\\"b\",le=\"0.01\"}} 2 # {{trace_id=\"abababababababababababababababab\",span_id=\"0101010101010101\"}} {value} 1700000000.123456789"
            )
        );
        assert_eq!(
            lines[2],
            "d_seconds_bucket{http_route=\"/a\\\"b\",le=\"0.025\"} 2"
        );
        assert_eq!(
            lines[3],
            "d_seconds_bucket{http_route=\"/a\\\"b\",le=\"+Inf\"} 3"
        );
        assert_eq!(lines[4], "d_seconds_count{http_route=\"/a\\\"b\"} 3");
        let (name, sum) = lines[5].rsplit_once(' ').unwrap();
        assert_eq!(name, "d_seconds_sum{http_route=\"/a\\\"b\"}");
        assert!((sum.parse::<f64>().unwrap() - 0.0371).abs() < 1e-8, "{sum}");

        let mut empty = String::new();
        write_histogram(
            &mut empty,
            "d",
            "",
            &Histogram::default(),
            ValueUnit::Seconds,
            &layout,
        );
        assert_eq!(
            empty,
            "d_bucket{le=\"0.005\"} 0\nd_bucket{le=\"0.01\"} 0\nd_bucket{le=\"0.025\"} 0\n\
             d_bucket{le=\"+Inf\"} 0\nd_count 0\nd_sum 0.0\n"
        );
    }

    #[test]
    fn counters_and_gauges_are_one_line_each() {
        let layout = Layout::new(vec![1.0]).unwrap();
        let metric = |name, points| Metric {
            name,
            description: "What \\ it\ncounts.",
            unit: "1",
            points,
            resource: None,
        };
        let counter = metric("a.b", Points::Counter(vec![(vec![("k", "v".into())], 2.0)]));
        let gauge = metric(
            "c",
            Points::Gauge(vec![(vec![], 1.5), (vec![("x", "y".into())], 3.0)]),
        );
        let mut out = String::new();
        write_family(&mut out, &[&counter], &layout);
        write_family(&mut out, &[&gauge], &layout);
        assert_eq!(
            out,
            "# HELP a_b What \\\\ it\\ncounts.\n# TYPE a_b counter\na_b_total{k=\"v\"} 2.0\n\
             # HELP c What \\\\ it\\ncounts.\n# TYPE c gauge\nc 1.5\nc{x=\"y\"} 3.0\n"
        );
    }

    #[test]
    fn target_info_is_one_family_with_a_series_per_resource() {
        let agent = crate::model::metrics::Resource {
            attributes: vec![("service.name".into(), "periscope".into())],
        };
        let process = crate::export::prometheus::tests::process_metric(Some((7, "6f0e")));
        let mut out = String::new();
        write_target_info(&mut out, &target_infos(&agent, &[process]));
        assert_eq!(
            out,
            "# HELP target_info Target metadata\n# TYPE target_info gauge\n\
             target_info{service_name=\"periscope\"} 1\n\
             target_info{service_name=\"api\",service_instance_id=\"node-1:7\",k8s_pod_uid=\"6f0e\"} 1\n"
        );
    }

    #[test]
    fn numbers_read_back_exactly() {
        assert_eq!(float(0.005), "0.005");
        assert_eq!(float(1e-6), "1e-6");
        assert_eq!(float(10.0), "10.0");
        assert_eq!(float(16_777_216.0), "16777216.0");
        assert_eq!(float(f64::INFINITY), "+Inf");
        for v in [1e-7, 2e-6, 0.075, 1e3, 1073741824.0] {
            assert_eq!(float(v).parse::<f64>().unwrap(), v);
        }
    }
}
