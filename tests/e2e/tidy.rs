//! The architecture, checked: the core's manifest names no adapter crate,
//! `anyhow` stays in the binary crate, every source file opens with a `//!`
//! header, no function runs past 80 lines without a comment saying why, and
//! the top-level modules of each crate depend on each other without cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use flowhost_tests::repo_root;

/// Every crate under host/, so that a new adapter is checked from its
/// first commit.
fn crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("host"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 5, "host/ crates: {names:?}");
    names
}

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A file's code without its `#[cfg(test)]` part (always at the end here).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[test]
fn the_core_names_no_adapter_crate() {
    let manifest = std::fs::read_to_string(repo_root().join("host/core/Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .unwrap();
    for adapter in [
        "wasmtime",
        "redis",
        "axum",
        "hyper",
        "prometheus",
        "utoipa",
        "flowhost-",
    ] {
        assert!(
            !deps.lines().any(|l| l.trim_start().starts_with(adapter)),
            "host/core/Cargo.toml depends on {adapter}"
        );
    }
}

#[test]
fn anyhow_only_in_the_binary_crate() {
    for krate in crates().into_iter().filter(|k| k != "flowhost") {
        let dir = repo_root().join("host").join(&krate);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(!manifest.contains("anyhow"), "{krate}/Cargo.toml");
        for file in sources(&dir.join("src")) {
            assert!(
                !code_of(&file).contains("anyhow"),
                "{} uses anyhow",
                file.display()
            );
        }
    }
}

#[test]
fn every_file_opens_with_a_header() {
    for krate in crates() {
        for file in sources(&repo_root().join("host").join(&krate)) {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.starts_with("//!"),
                "{} has no //! header",
                file.display()
            );
        }
    }
}

/// Functions longer than 80 lines, unless a comment right above says why.
#[test]
fn long_functions_say_why() {
    let mut long = Vec::new();
    for krate in crates() {
        for file in sources(&repo_root().join("host").join(&krate).join("src")) {
            if file.ends_with("tests.rs") || file.components().any(|c| c.as_os_str() == "tests") {
                continue;
            }
            let code = code_of(&file);
            let lines: Vec<&str> = code.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let trimmed = line.trim_start();
                let indent = &line[..line.len() - trimmed.len()];
                let is_fn = [
                    "fn ",
                    "pub fn ",
                    "async fn ",
                    "pub async fn ",
                    "pub(crate) fn ",
                ]
                .iter()
                .chain(&[
                    "pub(super) fn ",
                    "pub(super) async fn ",
                    "pub(crate) async fn ",
                ])
                .any(|p| trimmed.starts_with(p));
                if !is_fn || trimmed.ends_with(';') {
                    continue;
                }
                let close = format!("{indent}}}");
                let Some(len) = lines[i..].iter().position(|l| *l == close) else {
                    continue;
                };
                let reason = i > 0 && lines[i - 1].trim_start().starts_with("//");
                if len + 1 > 80 && !reason {
                    long.push(format!("{}:{} ({} lines)", file.display(), i + 1, len + 1));
                }
            }
        }
    }
    assert!(long.is_empty(), "functions over 80 lines: {long:#?}");
}

/// The `crate::MODULE` references between a crate's top-level modules.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(src) {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let code: String = code_of(&file)
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let is_module = src.join(format!("{name}.rs")).is_file() || src.join(&name).is_dir();
            if is_module && name != top {
                graph.entry(top.clone()).or_default().insert(name);
            }
        }
    }
    graph
}

#[test]
fn modules_form_no_cycle() {
    for krate in crates() {
        let graph = module_graph(&repo_root().join("host").join(&krate).join("src"));
        // Depth-first search for a path back to where it started.
        for start in graph.keys() {
            let mut todo: Vec<Vec<&String>> = vec![vec![start]];
            let mut seen = BTreeSet::new();
            while let Some(path) = todo.pop() {
                let last = *path.last().unwrap();
                for next in graph.get(last).into_iter().flatten() {
                    assert!(next != start, "{krate}: module cycle {path:?} -> {next}");
                    if seen.insert(next) {
                        let mut longer = path.clone();
                        longer.push(next);
                        todo.push(longer);
                    }
                }
            }
        }
    }
}

/// The repository holds sources, not what building or running them makes:
/// compiled artifacts, plugin builds, target folders, a host's data.
#[test]
fn the_repository_holds_no_build_outputs() {
    let listed = std::process::Command::new("git")
        .args(["ls-files"])
        .current_dir(repo_root())
        .output()
        .expect("git ls-files");
    assert!(listed.status.success(), "git ls-files failed");
    let files = String::from_utf8_lossy(&listed.stdout);
    let outputs: Vec<&str> = files
        .lines()
        .filter(|f| {
            f.ends_with(".cwasm")
                || f.ends_with(".wasm")
                || f.split('/')
                    .any(|part| part == "target" || part == ".flowhost")
                || f.starts_with("plugins/dist/")
                || f.starts_with("plugins/testing/dist/")
        })
        .collect();
    assert!(outputs.is_empty(), "build outputs in git: {outputs:#?}");
}
