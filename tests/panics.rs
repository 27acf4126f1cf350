//! A panic is confined to what it happens in: release builds unwind (with
//! `panic = "abort"` one bad request would end every stream of the process).

#[test]
fn release_builds_unwind() {
    let manifest: toml::Table =
        toml::from_str(include_str!("../Cargo.toml")).expect("Cargo.toml parses");
    let profiles = manifest.get("profile").and_then(|p| p.as_table());
    for name in ["release", "bench"] {
        let panic = profiles
            .and_then(|p| p.get(name))
            .and_then(|p| p.get("panic"))
            .and_then(|v| v.as_str())
            .unwrap_or("unwind");
        assert_eq!(panic, "unwind", "[profile.{name}] panic");
    }
}
