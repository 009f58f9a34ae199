//! `http.route`: configured patterns first (`/users/{id}`), then a heuristic that turns
//! identifier-like segments (numbers, UUIDs, long hex, opaque tokens) into `{id}`, then a cap of
//! distinct routes per service beyond which everything after the first segment becomes `*`.

use foldhash::{HashMap, HashMapExt, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: any one segment.
    Param,
    /// `*` as the last segment: any rest.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("route pattern {text:?} must start with '/'"));
        }
        let parts: Vec<&str> = text.split('/').skip(1).collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(
                if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
                    Segment::Param
                } else if *part == "*" {
                    if i + 1 != parts.len() {
                        return Err(format!(
                            "route pattern {text:?}: '*' must be the last segment"
                        ));
                    }
                    Segment::Rest
                } else {
                    Segment::Literal((*part).to_string())
                },
            );
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    fn matches(&self, path_segments: &[&str]) -> bool {
        let mut i = 0;
        for segment in &self.segments {
            match segment {
                Segment::Rest => return true,
                Segment::Param => {
                    if path_segments.get(i).is_none_or(|s| s.is_empty()) {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if path_segments.get(i) != Some(&l.as_str()) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == path_segments.len()
    }
}

/// Whether a path segment looks like an identifier rather than a name.
pub fn is_identifier(segment: &str) -> bool {
    let len = segment.len();
    if len == 0 {
        return false;
    }
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    let hex = segment.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = len == 36
        && segment.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    digits == len                       // 42
        || uuid                         // 123e4567-e89b-12d3-a456-426614174000
        || (hex && len >= 8 && digits > 0) // a3f9c2e1...
        || (len >= 16 && digits * 4 >= len) // opaque tokens with many digits
}

/// The `{id}` form of a path by the heuristic.
pub fn heuristic(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    heuristic_into(path, &mut out);
    out
}

/// [`heuristic`] into `out` (cleared first): no allocation once `out` has grown.
fn heuristic_into(path: &str, out: &mut String) {
    out.clear();
    for segment in path.split('/').skip(1) {
        out.push('/');
        out.push_str(if is_identifier(segment) {
            "{id}"
        } else {
            segment
        });
    }
    if out.is_empty() {
        out.push('/');
    }
}

/// Route normalisation with a per-service cap.
#[derive(Debug)]
pub struct Routes {
    patterns: Vec<Pattern>,
    max_per_service: usize,
    seen: HashMap<String, HashSet<String>>,
    /// The route being made: a route already seen costs no allocation (this runs for every
    /// exchange).
    scratch: String,
}

/// Longest path kept before normalisation: longer ones are cut (a hostile client cannot make
/// Periscope hold megabytes of route).
const MAX_PATH: usize = 512;

impl Routes {
    pub fn new(patterns: &[String], max_per_service: usize) -> Result<Self, String> {
        Ok(Self {
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
            max_per_service: max_per_service.max(1),
            seen: HashMap::new(),
            scratch: String::new(),
        })
    }

    /// The route of `path` (no query string) for `service`.
    pub fn route(&mut self, service: &str, path: &str) -> &str {
        let path = &path[..floor_char_boundary(path, MAX_PATH)];
        if !self.patterns.is_empty() {
            let segments = path.split('/').skip(1).collect::<Vec<&str>>();
            if let Some(p) = self.patterns.iter().find(|p| p.matches(&segments)) {
                return &p.text;
            }
        }
        heuristic_into(path, &mut self.scratch);
        if !self.seen.contains_key(service) {
            self.seen.insert(service.to_string(), HashSet::default());
        }
        let seen = self.seen.get_mut(service).expect("inserted above");
        if seen.contains(self.scratch.as_str()) {
            return &self.scratch;
        }
        if seen.len() < self.max_per_service {
            seen.insert(self.scratch.clone());
            return &self.scratch;
        }
        // Over the cap: keep the first segment only.
        let mut segments = path.split('/').skip(1);
        match (segments.next(), segments.next().is_some()) {
            (Some(first), more) if more || !first.is_empty() => {
                self.scratch.clear();
                self.scratch.push('/');
                self.scratch
                    .push_str(if is_identifier(first) { "{id}" } else { first });
                self.scratch.push_str("/*");
                if seen.contains(self.scratch.as_str()) || seen.len() < self.max_per_service * 2 {
                    if !seen.contains(self.scratch.as_str()) {
                        seen.insert(self.scratch.clone());
                    }
                    &self.scratch
                } else {
                    "/*"
                }
            }
            _ => "/",
        }
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_win_over_the_heuristic() {
        let mut r = Routes::new(&["/users/{id}/orders".into(), "/static/*".into()], 10).unwrap();
        assert_eq!(r.route("s", "/users/alice/orders"), "/users/{id}/orders");
        assert_eq!(r.route("s", "/static/css/a.css"), "/static/*");
        assert_eq!(r.route("s", "/users/42"), "/users/{id}");
        assert!(Routes::new(&["users".into()], 1).is_err());
        assert!(Routes::new(&["/a/*/b".into()], 1).is_err());
    }

    #[test]
    fn identifiers() {
        assert_eq!(
            heuristic("/orders/123e4567-e89b-12d3-a456-426614174000/items/7"),
            "/orders/{id}/items/{id}"
        );
        assert_eq!(heuristic("/blob/deadbeef01"), "/blob/{id}");
        assert_eq!(heuristic("/api/v1/health"), "/api/v1/health");
        assert_eq!(heuristic("/"), "/");
        assert_eq!(heuristic(""), "/");
    }

    #[test]
    fn cap_collapses_to_first_segment_then_star() {
        let mut r = Routes::new(&[], 2).unwrap();
        assert_eq!(r.route("s", "/a/x"), "/a/x");
        assert_eq!(r.route("s", "/a/y"), "/a/y");
        assert_eq!(r.route("s", "/a/z"), "/a/*");
        assert_eq!(r.route("s", "/b/z"), "/b/*");
        assert_eq!(r.route("s", "/c/z"), "/*");
        assert_eq!(r.route("s", "/a/x"), "/a/x");
        // Another service has its own budget.
        assert_eq!(r.route("t", "/c/z"), "/c/z");
    }
}
