//! Dependencies point one way (issue 13): a module uses only modules listed
//! after it in the `//!` map of `src/lib.rs`. This reads every source file's
//! `crate::` paths (tests excluded) and fails on any that points up the list,
//! and fails when the map and the crate's modules disagree.

use std::collections::BTreeSet;
use std::path::Path;

/// The modules in the order of `src/lib.rs`'s map, top first.
fn documented_order() -> Vec<String> {
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    let map: String = lib
        .lines()
        .take_while(|l| !l.starts_with("//! Tests and benches"))
        .skip_while(|l| !l.starts_with("//! ## Layout"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut order = Vec::new();
    for part in map.split("[`").skip(1) {
        let name = part.split('`').next().unwrap();
        if !name.contains("::") && !order.iter().any(|o| o == name) {
            order.push(name.to_string());
        }
    }
    order
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_crate_path_points_down_the_documented_order() {
    let order = documented_order();
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules = BTreeSet::new();
    let mut violations = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(module.as_str(), "lib" | "main" | "standin") {
            continue;
        }
        modules.insert(module.clone());
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests may reach anywhere; so may comments.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for used in line.split("crate::").skip(1) {
                let used: String = used
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let (Some(from), Some(to)) = (
                    order.iter().position(|m| *m == module),
                    order.iter().position(|m| *m == used),
                ) else {
                    continue;
                };
                if to < from {
                    violations.push(format!("{}: {module} -> {used}", rel.display()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies pointing up:\n{}",
        violations.join("\n")
    );
    let documented: BTreeSet<String> = order.into_iter().collect();
    assert_eq!(
        modules, documented,
        "src/lib.rs's map and the crate's modules differ"
    );
}
