//! OTLP export into a real receiver built from the official protobuf definitions, over gRPC and
//! HTTP/protobuf: the decoded histograms equal what the Prometheus endpoint shows, exactly.
//! Also: a collector that refuses or is down costs nothing but retries.

use std::time::Duration;

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{KeyValue, any_value},
    metrics::v1::metric::Data,
};
use periscope_e2e::{
    daemon::Daemon, exclusive, loopdev::LoopDevice, otlp_receiver::OtlpReceiver,
    scrape::PromHistogram, wait_for,
};

const DURATION: &str = "kernel_block_io_duration_seconds";
const SIZE: &str = "kernel_block_io_size_bytes";

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// The histogram `name` for `(major:minor, write)` in an export request, as Prometheus-style
/// cumulative buckets (explicit and exponential alike).
fn exported(request: &ExportMetricsServiceRequest, name: &str, mm: &str) -> Option<PromHistogram> {
    let metric = request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .find(|m| m.name == name)?;
    let wanted = |a: &[KeyValue]| {
        attr(a, "block.device.major_minor") == Some(mm)
            && attr(a, "block.io.operation") == Some("write")
    };
    let mut buckets = Vec::new();
    let (count, sum) = match metric.data.as_ref()? {
        Data::Histogram(h) => {
            let p = h.data_points.iter().find(|p| wanted(&p.attributes))?;
            let mut cumulative = 0;
            for (i, n) in p.bucket_counts.iter().enumerate() {
                cumulative += n;
                let bound = p.explicit_bounds.get(i).copied().unwrap_or(f64::INFINITY);
                buckets.push((bound, cumulative as f64));
            }
            (p.count, p.sum.unwrap_or(f64::NAN))
        }
        Data::ExponentialHistogram(h) => {
            let p = h.data_points.iter().find(|p| wanted(&p.attributes))?;
            let positive = p.positive.clone().unwrap_or_default();
            let base_edge = |i: i32| ((i as f64) / (1u32 << p.scale) as f64).exp2();
            let mut cumulative = p.zero_count;
            if p.zero_count > 0 {
                buckets.push((0.0, cumulative as f64));
            }
            for (i, n) in positive.bucket_counts.iter().enumerate() {
                if *n == 0 {
                    continue;
                }
                let index = positive.offset + i as i32;
                buckets.push((base_edge(index), cumulative as f64)); // lower edge
                cumulative += n;
                buckets.push((base_edge(index + 1), cumulative as f64));
            }
            buckets.dedup_by(|b, a| {
                a.0 == b.0 && {
                    a.1 = b.1;
                    true
                }
            });
            buckets.push((f64::INFINITY, cumulative as f64));
            (p.count, p.sum.unwrap_or(f64::NAN))
        }
        _ => return None,
    };
    Some(PromHistogram {
        buckets,
        count: count as f64,
        sum,
    })
}

fn round_trip(protocol: &str, aggregation: &str) {
    let _machine = exclusive();
    let receiver = OtlpReceiver::start();
    let port = if protocol == "grpc" {
        receiver.grpc_port
    } else {
        receiver.http_port
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let disk = LoopDevice::create(64);
    let mm = disk.major_minor();
    let config = format!(
        "probes:\n  sched:\n    enabled: false\n  http:\n    enabled: false\n  syscall:\n    enabled: false\n  tcp:\n    enabled: false\notlp:\n  interval: 1s\n  histogram_aggregation: {aggregation}\n"
    );
    let daemon = Daemon::start(
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ],
    );
    disk.direct_writes(4096, 300);
    disk.direct_writes(65536, 100);

    // The first export made after the workload carries all 400 writes; from then on the write
    // histograms of this disk no longer change, so both paths must show the same numbers.
    for name in ["kernel.block.io.duration", "kernel.block.io.size"] {
        wait_for(
            "an export with all 400 writes",
            Duration::from_secs(20),
            || {
                receiver
                    .requests()
                    .last()
                    .and_then(|r| exported(r, name, &mm))
                    .filter(|h| h.count == 400.0)
            },
        );
    }
    let scrape = daemon.scrape();
    let last = receiver.requests().last().cloned().expect("a request");
    let labels = [
        ("block_device_major_minor", mm.as_str()),
        ("block_io_operation", "write"),
    ];
    for (otel, prom) in [
        ("kernel.block.io.duration", DURATION),
        ("kernel.block.io.size", SIZE),
    ] {
        let from_otlp = exported(&last, otel, &mm).expect("exported histogram");
        let from_prometheus = scrape.histogram(prom, &labels);
        assert_eq!(from_otlp.count, from_prometheus.count, "{otel} count");
        assert_eq!(from_otlp.sum, from_prometheus.sum, "{otel} sum");
        assert_eq!(
            from_otlp.bucket_counts(),
            from_prometheus.bucket_counts(),
            "{otel} buckets"
        );
    }
    let resource = last.resource_metrics[0].resource.clone().expect("resource");
    assert_eq!(
        attr(&resource.attributes, "service.name"),
        Some("periscope")
    );
    assert!(attr(&resource.attributes, "host.name").is_some());
    let (status, _) = daemon.stop();
    assert!(status.success());
}

#[test]
fn grpc_explicit_histograms_equal_prometheus() {
    round_trip("grpc", "explicit_bucket_histogram");
}

#[test]
fn http_protobuf_explicit_histograms_equal_prometheus() {
    round_trip("http/protobuf", "explicit_bucket_histogram");
}

#[test]
fn grpc_exponential_histograms_equal_prometheus() {
    round_trip("grpc", "base2_exponential_bucket_histogram");
}

#[test]
fn http_protobuf_exponential_histograms_equal_prometheus() {
    round_trip("http/protobuf", "base2_exponential_bucket_histogram");
}

#[test]
fn refused_exports_are_retried_and_lose_no_counts() {
    let _machine = exclusive();
    let receiver = OtlpReceiver::start();
    receiver.refuse_next(3);
    let disk = LoopDevice::create(64);
    let mm = disk.major_minor();
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let daemon = Daemon::start(
        "probes:\n  sched:\n    enabled: false\n  http:\n    enabled: false\n  syscall:\n    enabled: false\n  tcp:\n    enabled: false\notlp:\n  interval: 2s\n",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    disk.direct_writes(4096, 120);
    wait_for(
        "an accepted export with all 120 writes",
        Duration::from_secs(30),
        || {
            receiver
                .requests()
                .last()
                .and_then(|r| exported(r, "kernel.block.io.size", &mm))
                .filter(|h| h.count == 120.0)
        },
    );
    let scrape = daemon.scrape();
    let retries = scrape
        .value("periscope_export_requests_total", &[("outcome", "retry")])
        .unwrap_or(0.0);
    assert!(
        retries >= 1.0,
        "UNAVAILABLE answers were retried ({retries})"
    );
}

#[test]
fn collector_down_keeps_prometheus_serving() {
    let closed = periscope_e2e::free_port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let daemon = Daemon::start(
        "probes:\n  sched:\n    enabled: false\n  http:\n    enabled: false\n  syscall:\n    enabled: false\n  tcp:\n    enabled: false\notlp:\n  interval: 1s\n  timeout: 500ms\n",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    wait_for("a failed export", Duration::from_secs(20), || {
        daemon
            .scrape()
            .value("periscope_export_requests_total", &[("outcome", "failure")])
            .filter(|n| *n >= 1.0)
    });
    // Still serving, still counting.
    let scrape = daemon.scrape();
    assert_eq!(
        scrape.value("periscope_probe_attached", &[("probe", "block")]),
        Some(1.0)
    );
    let (status, log) = daemon.stop();
    assert!(
        status.success(),
        "clean exit with the collector down: {log}"
    );
}
