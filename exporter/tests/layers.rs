//! The layers of `exporter/src` import downwards only (docs/architecture.md): the model at the
//! bottom, the process registry and kernel plumbing above it, the families above them, then
//! config and telemetry, export, and triage, check and the daemon at the top. This test reads
//! the sources and fails on an import that points up, so a shortcut is caught when written.

use std::path::{Path, PathBuf};

/// The layers, bottom first: a folder of `src/` may name only the layers before it in this
/// list, never one after it (layers of two or more are peers that do not name each other).
const LAYERS: &[&[&str]] = &[
    &["model"],
    &["process", "kernel"],
    &["families"],
    &["config", "telemetry"],
    &["export"],
    &["triage", "check", "profile"],
];

/// Per layer folder, the modules it must not name: every later layer, and its own peers.
fn forbidden(layer: &str) -> Vec<&'static str> {
    let at = LAYERS
        .iter()
        .position(|l| l.contains(&layer))
        .expect("a known layer");
    let peers = LAYERS[at].iter().filter(|m| **m != layer);
    LAYERS[at + 1..]
        .iter()
        .flat_map(|l| l.iter())
        .chain(peers)
        .copied()
        .collect()
}

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level modules a source file names after `crate::`, including each item of a
/// `crate::{a::x, b}` group (imports and paths alike).
fn crate_modules(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut modules = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            modules.push(ident(rest));
            continue;
        };
        // Items of the group at depth 0: `a::x`, `b::{y, z}`, `c`.
        let (mut depth, mut item_start) = (0usize, 0usize);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    modules.push(ident(&group[item_start..]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    modules.push(ident(&group[item_start..]));
                    item_start = i + 1;
                }
                _ => {}
            }
        }
    }
    modules.retain(|m| !m.is_empty());
    modules
}

#[test]
fn every_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for layer in ["model", "process", "kernel", "families", "export"] {
        let forbidden = forbidden(layer);
        for file in sources(&src.join(layer)) {
            let text = std::fs::read_to_string(&file).expect("read source");
            for module in crate_modules(&text) {
                if forbidden.contains(&module.as_str()) {
                    violations.push(format!(
                        "{} names crate::{module} ({layer} may not)",
                        file.strip_prefix(&src).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(
        violations.is_empty(),
        "imports across layers:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_rule_catches_an_upward_import() {
    assert_eq!(
        crate_modules(
            "use crate::{\n    families::{http, tcp},\n    model::metrics,\n};\nx = crate::export::otlp;"
        ),
        vec!["families", "model", "export"],
    );
}

/// The probe families (folders, or single files, of `src/families/`).
fn families(src: &Path) -> Vec<(String, Vec<PathBuf>)> {
    let shared = [
        "mod.rs",
        "attach.rs",
        "probes.rs",
        "settings.rs",
        "user_probe.rs",
    ];
    std::fs::read_dir(src.join("families"))
        .expect("read families")
        .flatten()
        .map(|e| e.path())
        .filter(|p| !shared.iter().any(|s| p.ends_with(s)))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let files = if p.is_dir() { sources(&p) } else { vec![p] };
            (name, files)
        })
        .collect()
}

#[test]
fn no_family_imports_another() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let all = families(&src);
    assert!(
        all.len() >= 7,
        "families found: {:?}",
        all.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let mut violations = Vec::new();
    for (name, files) in &all {
        for file in files {
            let text = std::fs::read_to_string(file).expect("read source");
            for (other, _) in all.iter().filter(|(other, _)| other != name) {
                if text.contains(&format!("families::{other}::"))
                    || text.contains(&format!("families::{other};"))
                {
                    violations.push(format!("{} names family {other}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
