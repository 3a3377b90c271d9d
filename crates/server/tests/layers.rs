//! The allowed import directions between the server's top-level modules (ARCHITECTURE.md,
//! "Layers"): a module may name (`crate::…`) only modules of a lower layer, never one of
//! its own layer. Test code (`tests.rs`, and what follows `#[cfg(test)]`) is exempt.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top to bottom. A module of a layer may use the modules of every layer below it.
const LAYERS: &[&[&str]] = &[
    &["app"],
    &["api", "worker"],
    &["retention", "running"],
    &["executors"],
    &["config", "workdirs"],
    &["auth"],
    &["store", "blobs"],
    &["jobs", "demo"],
    &["tools", "embedded"],
    &["transforms", "datadir", "telemetry"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level modules `text` names with `crate::` (`crate::{a, b}` included).
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (index, _) in text.match_indices("crate::") {
        let rest = &text[index + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                names.insert(identifier(item.trim()));
            }
        } else {
            names.insert(identifier(rest));
        }
    }
    names.retain(|name| name.starts_with(|c: char| c.is_ascii_lowercase()));
    names
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn modules_import_only_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&root).unwrap();
        if relative.file_name().unwrap() == "tests.rs" {
            continue;
        }
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_owned();
        if module == "lib" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            violations.push(format!("{module} is in no layer (add it to LAYERS)"));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for name in named_modules(code) {
            if name == module {
                continue;
            }
            match layer_of(&name) {
                Some(layer) if layer > own => {}
                Some(_) => violations.push(format!(
                    "{} uses crate::{name}: {module} may use only lower layers",
                    relative.display()
                )),
                None => violations.push(format!("crate::{name} is in no layer")),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "import directions broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_check_sees_grouped_and_nested_names() {
    let names =
        named_modules("use crate::{api::x, worker};\nlet a = crate::store::X; crate::StartError");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["api", "store", "worker"]
    );
}
