//! docs/metrics.md is the metrics reference users and dashboards rely on: it must list exactly
//! the metrics the code exports (`model::names::ALL`), one table row each.

use std::collections::BTreeSet;

/// The OTel names in the first column of docs/metrics.md's tables (`| `name` | ...`).
fn documented() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("read docs/metrics.md");
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(name, _)| name.to_string()))
        .filter(|name| name.contains('.'))
        .collect()
}

#[test]
fn the_metrics_reference_lists_exactly_the_exported_metrics() {
    let exported: BTreeSet<String> = periscope::model::names::ALL
        .iter()
        .map(|n| n.to_string())
        .collect();
    let documented = documented();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&exported).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}; documented but not exported: {stale:?}"
    );
}

#[test]
fn every_name_is_exported_once() {
    let all = periscope::model::names::ALL;
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "a name listed twice in model::names::ALL"
    );
}

/// A metric named by a string literal would escape both checks above.
#[test]
fn metrics_are_named_through_the_constants() {
    fn visit(dir: &std::path::Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                visit(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("names.rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for prefix in ["kernel.", "http.", "periscope.", "process.", "rpc."] {
                    if text.contains(&format!("name: \"{prefix}")) {
                        found.push(format!("{} (name: \"{prefix}...)", path.display()));
                    }
                }
            }
        }
    }
    let mut found = Vec::new();
    visit(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut found,
    );
    assert!(found.is_empty(), "metric names as literals: {found:?}");
}
