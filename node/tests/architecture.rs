//! The import rules of ARCHITECTURE.md, checked on the source: front doors see only the
//! handle, openraft stays inside `raft/` and `store/`, and the node's top-level modules
//! depend on each other without cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`raft/server.rs` → `raft`, `api.rs` → `api`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The file's code, without line comments (doc comments may name anything).
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The top-level modules a file names as `crate::<module>`.
fn uses(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(i, _)| code[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
        .filter(|m| !m.is_empty() && m.chars().next().unwrap().is_lowercase())
        .collect()
}

/// `module → modules it uses`, over the library's files (not `lib.rs` and `main.rs`).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src()) {
        let m = module_of(&file);
        if m == "lib" || m == "main" {
            continue;
        }
        let deps: Vec<String> = uses(&code(&file)).into_iter().filter(|d| *d != m).collect();
        g.entry(m).or_default().extend(deps);
    }
    g
}

#[test]
fn front_doors_see_only_the_handle() {
    let mut offenders = Vec::new();
    for file in sources(&src()) {
        let m = module_of(&file);
        if !["http", "grpc", "dapr", "mqtt"].contains(&m.as_str()) {
            continue;
        }
        let used = uses(&code(&file));
        for banned in ["raft", "store", "node"] {
            if used.contains(banned) {
                offenders.push(format!("{} uses crate::{banned}", file.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "front doors must go through NodeHandle:\n{}", offenders.join("\n"));
}

#[test]
fn only_raft_and_store_name_openraft() {
    let offenders: Vec<String> = sources(&src())
        .into_iter()
        .filter(|f| !["raft", "store"].contains(&module_of(f).as_str()))
        // A path into the crate (a log filter may still name its target).
        .filter(|f| code(f).contains("openraft::"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "openraft named outside raft/ and store/:\n{}", offenders.join("\n"));
}

#[test]
fn top_level_modules_form_no_cycle() {
    let g = graph();
    // Depth-first search; a module met again on the current path closes a cycle.
    fn visit(m: &str, g: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!("module cycle: {} -> {m}", path[i..].join(" -> "));
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            visit(d, g, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(m, &g, &mut Vec::new(), &mut done);
    }
    assert!(g.contains_key("handle") && g["handle"].contains("raft"), "the scan found the modules: {g:?}");
}
