//! Delta temporality for OTLP: each export carries what changed since the last export the
//! collector accepted. The kernel maps stay cumulative (they are what the Prometheus endpoint
//! reads); the exporter keeps the cumulative values it last had accepted, one per series of the
//! current snapshot, and subtracts. A failed export does not move that baseline, so its counts
//! go into the next export and an outage loses nothing in delta mode either.

use std::{collections::HashMap, time::SystemTime};

use crate::{
    model::histogram::Histogram,
    model::metrics::{Attributes, Metric, Points},
};

/// A series: metric name, the observed process's resource (empty for the agent's own), and the
/// point's attributes.
type SeriesKey = (&'static str, Vec<(String, String)>, Attributes);

#[derive(Debug, Clone, PartialEq)]
enum Cumulative {
    Counter(f64),
    Histogram(Histogram),
}

/// The cumulative values the collector has accepted, and since when deltas run.
#[derive(Debug, Default)]
pub struct Baseline {
    accepted: HashMap<SeriesKey, Cumulative>,
    since: Option<SystemTime>,
}

/// One export's deltas, and the baseline that replaces the old one if it is accepted.
pub struct Deltas {
    pub metrics: Vec<Metric>,
    /// Start of every delta point: the previous accepted export, or the daemon's start.
    pub start: SystemTime,
    next: HashMap<SeriesKey, Cumulative>,
    taken_at: SystemTime,
}

fn resource_key(metric: &Metric) -> Vec<(String, String)> {
    metric
        .resource
        .as_ref()
        .map(|r| r.attributes.clone())
        .unwrap_or_default()
}

impl Baseline {
    /// `metrics` (cumulative, taken at `taken_at`) minus what was accepted. A series whose
    /// value went down was reset (its kernel entry expired and came back): its delta is its
    /// whole value. Gauges pass through unchanged.
    pub fn deltas(&self, metrics: &[Metric], started: SystemTime, taken_at: SystemTime) -> Deltas {
        let mut next = HashMap::new();
        let mut out = Vec::with_capacity(metrics.len());
        for metric in metrics {
            let resource = resource_key(metric);
            let key = |a: &Attributes| (metric.name, resource.clone(), a.clone());
            let points = match &metric.points {
                Points::Gauge(points) => Points::Gauge(points.clone()),
                Points::Counter(points) => Points::Counter(
                    points
                        .iter()
                        .map(|(a, value)| {
                            let k = key(a);
                            let delta = match self.accepted.get(&k) {
                                Some(Cumulative::Counter(before)) if before <= value => {
                                    value - before
                                }
                                _ => *value,
                            };
                            next.insert(k, Cumulative::Counter(*value));
                            (a.clone(), delta)
                        })
                        .collect(),
                ),
                Points::Histogram(unit, points) => Points::Histogram(
                    *unit,
                    points
                        .iter()
                        .map(|(a, h)| {
                            let k = key(a);
                            let delta = match self.accepted.get(&k) {
                                Some(Cumulative::Histogram(before)) => {
                                    h.minus(before).unwrap_or_else(|| h.clone())
                                }
                                _ => h.clone(),
                            };
                            next.insert(k, Cumulative::Histogram(h.clone()));
                            (a.clone(), delta)
                        })
                        .collect(),
                ),
            };
            out.push(Metric {
                points,
                ..metric.clone()
            });
        }
        Deltas {
            metrics: out,
            start: self.since.unwrap_or(started),
            next,
            taken_at,
        }
    }

    /// The collector accepted `deltas`: they are the new baseline. Series absent from that
    /// snapshot are forgotten, so the baseline never outgrows the live series.
    pub fn accept(&mut self, deltas: Deltas) {
        self.accepted = deltas.next;
        self.since = Some(deltas.taken_at);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::histogram::ValueUnit;

    fn hist(counts: &[(u32, u64)], sum: u64) -> Histogram {
        Histogram {
            counts: counts.iter().copied().collect(),
            sum,
            exemplars: Vec::new(),
        }
    }

    fn snapshot(counter: f64, h: Histogram) -> Vec<Metric> {
        let attrs: Attributes = vec![("k", "v".to_string())];
        vec![
            Metric {
                name: "c",
                description: "",
                unit: "1",
                points: Points::Counter(vec![(attrs.clone(), counter)]),
                resource: None,
            },
            Metric::histogram("h", "", ValueUnit::Seconds, vec![(attrs, h)]),
        ]
    }

    fn values(m: &[Metric]) -> (f64, Histogram) {
        let Points::Counter(c) = &m[0].points else {
            panic!()
        };
        let Points::Histogram(_, h) = &m[1].points else {
            panic!()
        };
        (c[0].1, h[0].1.clone())
    }

    #[test]
    fn deltas_run_from_the_last_accepted_export_and_failures_lose_nothing() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut baseline = Baseline::default();

        let first = baseline.deltas(&snapshot(5.0, hist(&[(3, 2), (7, 1)], 30)), t0, at(10));
        assert_eq!(first.start, t0);
        assert_eq!(values(&first.metrics), (5.0, hist(&[(3, 2), (7, 1)], 30)));
        baseline.accept(first);

        // This export fails: not accepted, so the next one covers both intervals.
        let failed = baseline.deltas(&snapshot(8.0, hist(&[(3, 3), (7, 1)], 40)), t0, at(20));
        assert_eq!(values(&failed.metrics).0, 3.0);
        drop(failed);

        let next = baseline.deltas(
            &snapshot(12.0, hist(&[(3, 4), (7, 2), (9, 1)], 75)),
            t0,
            at(30),
        );
        assert_eq!(next.start, at(10), "from the last accepted export");
        assert_eq!(
            values(&next.metrics),
            (7.0, hist(&[(3, 2), (7, 1), (9, 1)], 45))
        );
        baseline.accept(next);

        // A reset series (its kernel entry expired and was recreated) starts over.
        let reset = baseline.deltas(&snapshot(2.0, hist(&[(3, 1)], 5)), t0, at(40));
        assert_eq!(values(&reset.metrics), (2.0, hist(&[(3, 1)], 5)));
    }
}
