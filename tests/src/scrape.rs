//! Parsing a `/metrics` answer (OpenMetrics/Prometheus text) into samples and histograms.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
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
        Self { samples }
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
}
