//! Parsing a `/metrics` answer into samples and histograms: the OpenMetrics text (classic
//! buckets of the fixed layouts), or the protobuf exposition, whose native histograms are the
//! kernel's own 4.4%-wide buckets: those become `_bucket` samples at the exact bucket edges, so
//! tests compare kernel counts bucket by bucket.

use std::collections::BTreeMap;

use prost::Message;

/// The `io.prometheus.client` types, generated from the exporter's vendored `metrics.proto`.
#[allow(clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/io.prometheus.client.rs"));
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// The protobuf exposition's classic buckets (`_bucket` samples with `le` labels), next to
    /// the native buckets in `samples`; empty for a text scrape, whose `samples` hold them.
    pub classic: Vec<Sample>,
    /// The decoded families of a protobuf scrape.
    pub families: Vec<proto::MetricFamily>,
}

/// A Prometheus histogram: cumulative counts at each `le`, ascending (+Inf last).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromHistogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self {
            samples,
            ..Self::default()
        }
    }

    /// Decodes a delimited protobuf scrape. Native histograms become `_bucket` samples at
    /// their bucket edges (a zero bucket at `le="0"`), with `_count` and `_sum`.
    pub fn from_protobuf(mut bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        let mut out = Self::default();
        while !bytes.is_empty() {
            let family = proto::MetricFamily::decode_length_delimited(&mut bytes)?;
            out.add_family(&family);
            out.families.push(family);
        }
        Ok(out)
    }

    fn add_family(&mut self, family: &proto::MetricFamily) {
        let name = family.name();
        for metric in &family.metric {
            let labels: BTreeMap<String, String> = metric
                .label
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            let push = |samples: &mut Vec<Sample>, suffix: &str, le: Option<f64>, value| {
                let mut labels = labels.clone();
                if let Some(le) = le {
                    labels.insert("le".into(), format_le(le));
                }
                samples.push(Sample {
                    name: format!("{name}{suffix}"),
                    labels,
                    value,
                });
            };
            if let Some(c) = &metric.counter {
                push(&mut self.samples, "", None, c.value());
            }
            if let Some(g) = &metric.gauge {
                push(&mut self.samples, "", None, g.value());
            }
            let Some(h) = &metric.histogram else {
                continue;
            };
            for (le, cumulative) in native_buckets(h) {
                push(&mut self.samples, "_bucket", Some(le), cumulative);
            }
            push(&mut self.samples, "_count", None, h.sample_count() as f64);
            push(&mut self.samples, "_sum", None, h.sample_sum());
            for b in &h.bucket {
                push(
                    &mut self.classic,
                    "_bucket",
                    Some(b.upper_bound()),
                    b.cumulative_count() as f64,
                );
            }
        }
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum of the values of `name` over the series matching `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let values: Vec<f64> = self.matching(name, labels).map(|s| s.value).collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// The histogram `name` summed over the series matching `labels` (empty if none).
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> PromHistogram {
        let mut series: BTreeMap<Vec<(String, String)>, PromHistogram> = BTreeMap::new();
        for s in self.matching(&format!("{name}_bucket"), labels) {
            let key: Vec<(String, String)> = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let le = s
                .labels
                .get("le")
                .map(|v| parse_value(v))
                .unwrap_or(f64::INFINITY);
            series.entry(key).or_default().buckets.push((le, s.value));
        }
        let mut total = PromHistogram::default();
        for h in series.values_mut() {
            h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            total = total.plus(h);
        }
        total.count = self.value(&format!("{name}_count"), labels).unwrap_or(0.0);
        total.sum = self.value(&format!("{name}_sum"), labels).unwrap_or(0.0);
        total
    }
}

impl PromHistogram {
    /// Cumulative count at `x`: the value at the largest listed `le <= x` (bounds that are not
    /// listed hold no counts of their own).
    pub fn cumulative_at(&self, x: f64) -> f64 {
        self.buckets
            .iter()
            .take_while(|(le, _)| *le <= x)
            .last()
            .map(|b| b.1)
            .unwrap_or(0.0)
    }

    fn bounds_with(&self, other: &Self) -> Vec<f64> {
        let mut les: Vec<f64> = self
            .buckets
            .iter()
            .chain(&other.buckets)
            .map(|b| b.0)
            .collect();
        les.sort_by(f64::total_cmp);
        les.dedup();
        les
    }

    fn plus(&self, other: &Self) -> Self {
        let buckets = self
            .bounds_with(other)
            .into_iter()
            .map(|le| (le, self.cumulative_at(le) + other.cumulative_at(le)))
            .collect();
        Self {
            buckets,
            count: self.count + other.count,
            sum: self.sum + other.sum,
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        let buckets = self
            .bounds_with(earlier)
            .into_iter()
            .map(|le| (le, self.cumulative_at(le) - earlier.cumulative_at(le)))
            .collect();
        Self {
            buckets,
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
        }
    }

    /// `(lower, upper, count)` of every bucket with a count.
    pub fn bucket_counts(&self) -> Vec<(f64, f64, f64)> {
        let mut out = Vec::new();
        let mut previous = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            let n = cumulative - previous.1;
            if n > 0.0 {
                out.push((previous.0, le, n));
            }
            previous = (le, cumulative);
        }
        out
    }

    /// The count in the bucket whose upper bound is `le`.
    pub fn count_in_bucket(&self, le: f64) -> f64 {
        self.bucket_counts()
            .iter()
            .filter(|b| b.1 == le)
            .map(|b| b.2)
            .sum()
    }

    /// Quantile as PromQL's histogram_quantile computes it (linear inside the bucket).
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.buckets.last().map(|b| b.1).unwrap_or(0.0);
        let rank = q * total;
        let mut previous = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank && cumulative > previous.1 {
                if le.is_infinite() {
                    return previous.0;
                }
                let fraction = (rank - previous.1) / (cumulative - previous.1);
                return previous.0 + (le - previous.0) * fraction;
            }
            previous = (le, cumulative);
        }
        f64::NAN
    }

    /// Re-binned into bcc's log2 microsecond slots (slot k holds [2^k, 2^(k+1)) µs, slot 0 also
    /// holds 0), placing each fine bucket by its geometric middle. Seconds in, counts out.
    pub fn log2_usec_slots(&self) -> BTreeMap<u32, f64> {
        let mut out = BTreeMap::new();
        for (lower, upper, n) in self.bucket_counts() {
            let middle_us = if lower > 0.0 {
                (lower * upper).sqrt()
            } else {
                upper
            } * 1e6;
            let whole_us = middle_us.floor() as u64;
            let slot = if whole_us == 0 {
                0
            } else {
                63 - whole_us.leading_zeros()
            };
            *out.entry(slot).or_default() += n;
        }
        out
    }
}

fn format_le(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".into()
    } else {
        format!("{le:?}")
    }
}

/// A native histogram (schema 4) as cumulative counts at bucket edges: each non-empty bucket's
/// lower and upper edge, so that counts between edges stay where they belong; `+Inf` last.
pub fn native_buckets(h: &proto::Histogram) -> Vec<(f64, f64)> {
    let schema = h.schema();
    let edge = |index: i32| (f64::from(index) / f64::from(1 << schema)).exp2();
    let mut out = Vec::new();
    let mut total = h.zero_count() as f64;
    if total > 0.0 {
        out.push((0.0, total));
    }
    let (mut index, mut count) = (0i32, 0i64);
    let mut deltas = h.positive_delta.iter();
    for (i, span) in h.positive_span.iter().enumerate() {
        index = if i == 0 {
            span.offset()
        } else {
            index + span.offset()
        };
        for _ in 0..span.length() {
            count += deltas.next().copied().unwrap_or(0);
            if count > 0 {
                let lower = edge(index - 1);
                if out.last().is_none_or(|(le, _)| *le < lower) {
                    out.push((lower, total));
                }
                total += count as f64;
                out.push((edge(index), total));
            }
            index += 1;
        }
    }
    out.push((f64::INFINITY, total));
    out
}

fn parse_value(v: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or(f64::NAN),
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)),
        None => (head, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value),
    })
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_histograms_and_differences() {
        let a = Scrape::parse(
            "x_bucket{d=\"a\",le=\"1.0\"} 2\nx_bucket{d=\"a\",le=\"+Inf\"} 2\nx_count{d=\"a\"} 2\nx_sum{d=\"a\"} 1.5\n",
        );
        let b = Scrape::parse(
            "x_bucket{d=\"a\",le=\"0.5\"} 1\nx_bucket{d=\"a\",le=\"1.0\"} 5\nx_bucket{d=\"a\",le=\"+Inf\"} 5\nx_count{d=\"a\"} 5\nx_sum{d=\"a\"} 3.0\n",
        );
        let d = b
            .histogram("x", &[("d", "a")])
            .since(&a.histogram("x", &[("d", "a")]));
        assert_eq!(d.count, 3.0);
        assert_eq!(d.bucket_counts(), vec![(0.0, 0.5, 1.0), (0.5, 1.0, 2.0)]);
    }

    #[test]
    fn native_buckets_become_edges_with_cumulative_counts() {
        // Schema 4, zero bucket 1; buckets 0 (count 2) and 1 (3), then 5 (1) after a gap.
        let h = proto::Histogram {
            schema: Some(4),
            zero_count: Some(1),
            positive_span: vec![
                proto::BucketSpan {
                    offset: Some(0),
                    length: Some(2),
                },
                proto::BucketSpan {
                    offset: Some(3),
                    length: Some(1),
                },
            ],
            positive_delta: vec![2, 1, -2],
            ..Default::default()
        };
        let edge = |i: i32| (f64::from(i) / 16.0).exp2();
        assert_eq!(
            native_buckets(&h),
            vec![
                (0.0, 1.0),
                (edge(-1), 1.0),
                (edge(0), 3.0),
                (edge(1), 6.0),
                (edge(4), 6.0),
                (edge(5), 7.0),
                (f64::INFINITY, 7.0),
            ]
        );
    }
}
