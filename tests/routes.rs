//! Route classification against Letta 0.16.8, route by route.
//!
//! `tests/data/letta-0.16.8-routes.tsv` says, for every route Letta 0.16.8
//! registers (the 249 operations of its OpenAPI document, kept beside it as
//! `letta-0.16.8-openapi.json`, and the routes it hides from the document),
//! which agent and block Letta acts on, whether the call only reads, whether
//! it streams and whether the default `[cache]` rules may keep its answer.
//! For each row this test builds concrete request paths (realistic ids and
//! names by parameter name), classifies them with `routes::classify`, plans
//! them with the default cache policy, and compares, under `/v1` and again
//! under `/latest`. Every operation of the OpenAPI document must have a row,
//! so a newer Letta snapshot with new routes fails here until the table says
//! what they do.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::{HeaderMap, Method};
use letta_proxy::cache::policy::{Plan, Policy};
use letta_proxy::config::CacheConfig;
use letta_proxy::routes::{classify, Classified, RouteKind};

const OPENAPI: &str = include_str!("data/letta-0.16.8-openapi.json");
const TABLE: &str = include_str!("data/letta-0.16.8-routes.tsv");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Always,
    Body,
    No,
}

#[derive(Debug)]
struct Row {
    method: Method,
    path: String,
    agent: String,
    block: String,
    read: bool,
    stream: Stream,
    cache: bool,
    hidden: bool,
    note: String,
}

fn yes_no(v: &str, line: usize) -> bool {
    match v {
        "yes" => true,
        "no" => false,
        other => panic!("table line {line}: {other:?} is not yes/no"),
    }
}

fn table() -> Vec<Row> {
    let mut lines = TABLE
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.is_empty());
    let (_, header) = lines.next().expect("a header line");
    assert_eq!(
        header,
        "method\tpath\tagent\tblock\tread\tstream\tcache\tschema\tsource\tnote"
    );
    lines
        .map(|(i, l)| {
            let line = i + 1;
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 10, "table line {line}: {l}");
            Row {
                method: f[0].parse().expect("a method"),
                path: f[1].to_string(),
                agent: f[2].to_string(),
                block: f[3].to_string(),
                read: yes_no(f[4], line),
                stream: match f[5] {
                    "always" => Stream::Always,
                    "body" => Stream::Body,
                    "no" => Stream::No,
                    other => panic!("table line {line}: stream {other:?}"),
                },
                cache: yes_no(f[6], line),
                hidden: match f[7] {
                    "openapi" => false,
                    "hidden" => true,
                    other => panic!("table line {line}: schema {other:?}"),
                },
                note: f[9].to_string(),
            }
        })
        .collect()
}

/// `(METHOD, path)` of every operation of the OpenAPI document, with the
/// `pattern` of each path parameter that has one.
fn openapi() -> BTreeMap<(String, String), BTreeMap<String, String>> {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let mut patterns = BTreeMap::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" {
                    let name = p["name"].as_str().expect("name").to_string();
                    let pattern = p["schema"]["pattern"].as_str().unwrap_or("").to_string();
                    patterns.insert(name, pattern);
                }
            }
            ops.insert((method.to_uppercase(), path.clone()), patterns);
        }
    }
    ops
}

/// A Letta id: `<prefix>-<uuid4>`, a different one per prefix so a mix-up shows.
fn id(prefix: &str) -> String {
    let n = prefix
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31) + b as u64)
        & 0xffff_ffff;
    format!("{prefix}-{n:08x}-1b2c-4d5e-8f90-{:012x}", n * 3)
}

/// The values to try for a path parameter (first one is the usual form).
/// `pattern` is the OpenAPI pattern when the parameter has one.
fn values(name: &str, pattern: &str) -> Vec<String> {
    let one = |s: String| vec![s];
    match name {
        "agent_id" => one(id("agent")),
        "block_id" => one(id("block")),
        // Letta addresses core-memory blocks by label.
        "block_label" => vec!["human".into(), "persona".into()],
        "conversation_id" => {
            let mut v = vec![id("conv")];
            // `validators.py:47-73`: some routes also take the agent's id
            // (deprecated: acts on the agent) or `default` (agent in body/query).
            if pattern.contains("agent-") {
                v.push(id("agent"));
            }
            if pattern.contains("default") {
                v.push("default".into());
            }
            v
        }
        "archive_id" => one(id("archive")),
        // Batches are jobs (`messages.py:169`).
        "batch_id" => one(id("job")),
        "deployment_id" => one("dep_2025_11".into()),
        "env_var_id" => one(id("sandbox-env")),
        "file_id" => one(id("file")),
        // Folders are sources (`schemas/enums.py`: FOLDER = "source").
        "folder_id" => one(id("source")),
        "folder_name" | "source_name" => one("research-papers".into()),
        "group_id" => one(id("group")),
        "identity_id" => one(id("identity")),
        "job_id" => one(id("job")),
        "mcp_server_id" => one(id("mcp_server")),
        "mcp_server_name" => one("weather".into()),
        "mcp_tool_name" => one("get_forecast".into()),
        // Archival memories are passages.
        "memory_id" | "passage_id" => one(id("passage")),
        "message_id" => one(id("message")),
        "provider_id" => one(id("provider")),
        "run_id" => one(id("run")),
        "sandbox_config_id" => one(id("sandbox")),
        "source_id" => one(id("source")),
        "step_id" => one(id("step")),
        "tool_id" => one(id("tool")),
        "tool_name" => one("web_search".into()),
        "transaction_id" => one("txn_01hzy3".into()),
        // Hidden catch-alls: `/v1/anthropic/v1/{endpoint:path}`, `/v1/zai/…`.
        "endpoint" => vec!["models".into(), "messages/count_tokens".into()],
        // `/v1/git/{path:path}`: `{agent_id}/state.git/…` (`git_http.py:204-218`).
        "path" => vec![
            format!("{}/state.git/info/refs", id("agent")),
            format!("{}/state.git/git-upload-pack", id("agent")),
        ],
        other => panic!(
            "no test value for path parameter {other:?}: a new Letta route? add one to values()"
        ),
    }
}

/// One concrete request: the path, and the value put in for each parameter.
struct Concrete {
    path: String,
    params: BTreeMap<String, String>,
}

/// Every combination of parameter values for `template`.
fn concretes(template: &str, patterns: &BTreeMap<String, String>) -> Vec<Concrete> {
    let mut out = vec![Concrete {
        path: String::new(),
        params: BTreeMap::new(),
    }];
    for seg in template.split('/').skip(1) {
        let param = seg
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .map(|p| p.split(':').next().unwrap_or(p));
        let choices: Vec<String> = match param {
            Some(name) => values(name, patterns.get(name).map_or("", String::as_str)),
            None => vec![seg.to_string()],
        };
        out = out
            .into_iter()
            .flat_map(|c| {
                choices.iter().map(move |v| {
                    let mut params = c.params.clone();
                    if let Some(name) = param {
                        params.insert(name.to_string(), v.clone());
                    }
                    Concrete {
                        path: format!("{}/{v}", c.path),
                        params,
                    }
                })
            })
            .collect();
    }
    out
}

/// The TTL a row's note states (`ttl 10s`, `ttl 5m`).
fn noted_ttl(note: &str) -> Option<Duration> {
    let t = note.strip_prefix("ttl ")?.split([';', ' ']).next()?;
    humantime::parse_duration(t).ok()
}

/// How strictly [`check`] compares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Realistic ids and names: everything as the table says.
    Exact,
    /// A free-form name that is one of Letta's words (a tool called `search`):
    /// the template may show it and a cache rule may be more careful (not
    /// cache), but the agent, block, read/write and streaming must not change.
    NameIsAWord,
}

/// Checks `path` (a concrete form of `row` under `prefix`) and returns what is wrong.
fn check(row: &Row, policy: &Policy, prefix: &str, c: &Concrete, mode: Mode) -> Vec<String> {
    let path = format!("{prefix}{}", c.path.strip_prefix("/v1").expect("/v1 path"));
    let m = &row.method;
    let r = classify(&path);
    let mut errs = Vec::new();
    let mut fail = |what: String| errs.push(format!("{m} {path}: {what}"));
    if r.kind == RouteKind::Outside {
        fail("classified outside the API".into());
    }
    // The agent and block Letta acts on.
    let want_agent: Option<&str> = match row.agent.as_str() {
        "-" => None,
        "path" => c.params["path"].split('/').next(),
        name => Some(c.params[name].as_str()).filter(|v| v.starts_with("agent-")),
    };
    if r.agent_id != want_agent {
        fail(format!(
            "agent {:?}, Letta acts on {want_agent:?}",
            r.agent_id
        ));
    }
    let want_block = match row.block.as_str() {
        "-" => None,
        name => Some(c.params[name].as_str()).filter(|v| v.starts_with("block-")),
    };
    if r.block_id != want_block {
        fail(format!(
            "block {:?}, Letta acts on {want_block:?}",
            r.block_id
        ));
    }
    if r.is_read(m) != row.read {
        fail(format!(
            "is_read {}, Letta: read = {}",
            r.is_read(m),
            row.read
        ));
    }
    // `classify` sees no method: where a name makes another method's route
    // match (`PATCH /v1/tools/mcp/servers/connect` updates a server called
    // `connect`; `POST` on that path is the streaming connect), the flag may
    // be set on a method that never streams. Only the cache reads it, and only
    // for GET and POST.
    let streaming_matters = mode == Mode::Exact || matches!(*m, Method::GET | Method::POST);
    if streaming_matters && r.streaming != (row.stream == Stream::Always) {
        fail(format!(
            "streaming {}, Letta: {:?}",
            r.streaming, row.stream
        ));
    }
    // The default cache policy, as the cache layer asks it.
    let plan = policy.plan(m, &path, &r, &HeaderMap::new());
    let want_plan_ok = match (*m == Method::GET, row.cache) {
        (true, true) => match plan {
            Plan::Read { ttl, .. } => noted_ttl(&row.note).is_none_or(|t| t == ttl),
            Plan::Pass => mode == Mode::NameIsAWord,
            _ => false,
        },
        (true, false) => plan == Plan::Pass,
        (false, true) => false,
        // Other methods: reads pass by, writes invalidate.
        (false, false) if row.read => plan == Plan::Pass,
        (false, false) => plan == Plan::Write,
    };
    if !want_plan_ok {
        fail(format!(
            "cache plan {plan:?}, table: cache = {}, read = {}, note {:?}",
            row.cache, row.read, row.note
        ));
    }
    if *m == Method::GET && row.cache && r.never_cached() {
        fail("never_cached on a cacheable route".into());
    }
    // The classification travels unchanged in a request's extensions.
    if Classified::of(&path).route(&path) != r {
        fail("Classified::of(..).route(..) differs from classify".into());
    }
    if mode == Mode::NameIsAWord {
        return errs;
    }
    // The template: the prefix, Letta's words kept, every parameter a
    // placeholder, no value of the request in it.
    let t = r.template;
    if !t.starts_with(&format!("{prefix}/")) && t != prefix {
        fail(format!("template {t:?} lost the prefix"));
    }
    for (name, v) in &c.params {
        for part in v.split('/') {
            // The catch-alls' inner words (`models`, `info/refs`) may be shown;
            // their ids may not. `default` is a fixed word of Letta's pattern.
            let fixed = (matches!(name.as_str(), "endpoint" | "path")
                && !part.contains("-1b2c-4d5e-"))
                || part == "default";
            if !fixed && t.split('/').any(|s| s == part) {
                fail(format!("template {t:?} shows the value {part:?}"));
            }
        }
    }
    let letta: Vec<&str> = row.path.split('/').skip(2).collect();
    let ours: Vec<&str> = t.split('/').skip(2).collect();
    let spans = row.path.contains(":path}");
    if !spans && letta.len() != ours.len() {
        fail(format!("template {t:?} has not the shape of {}", row.path));
    }
    for (l, o) in letta.iter().zip(&ours) {
        if l.starts_with('{') {
            if l.contains(":path}") {
                break;
            }
            if !o.starts_with('{') && *o != "default" {
                fail(format!("template {t:?}: {o:?} where Letta has {l}"));
            }
        } else if l != o {
            fail(format!(
                "template {t:?}: {o:?} where Letta has the word {l:?}"
            ));
        }
    }
    errs
}

#[test]
fn every_openapi_operation_has_a_row_and_every_row_is_a_letta_route() {
    let ops = openapi();
    let rows = table();
    let listed: BTreeSet<(String, String)> = rows
        .iter()
        .filter(|r| !r.hidden)
        .map(|r| (r.method.to_string(), r.path.clone()))
        .collect();
    let in_doc: BTreeSet<(String, String)> = ops.keys().cloned().collect();
    let missing: Vec<_> = in_doc.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "operations of the OpenAPI document with no row in tests/data/letta-0.16.8-routes.tsv \
         (say what Letta does on them): {missing:?}"
    );
    let extra: Vec<_> = listed.difference(&in_doc).collect();
    assert!(
        extra.is_empty(),
        "rows marked openapi that the document lacks: {extra:?}"
    );
    for r in rows.iter().filter(|r| r.hidden) {
        let key = (r.method.to_string(), r.path.clone());
        assert!(
            !in_doc.contains(&key),
            "{key:?} is in the document: not hidden"
        );
    }
    // One row per method and path.
    let mut seen = BTreeSet::new();
    for r in &rows {
        assert!(seen.insert((r.method.to_string(), &r.path)), "twice: {r:?}");
    }
    assert_eq!(in_doc.len(), 249, "Letta 0.16.8 serves 249 operations");
    assert_eq!(rows.len(), 269, "249 operations + 20 hidden method rows");
}

#[test]
fn every_letta_route_is_classified_as_letta_acts_on_it() {
    let ops = openapi();
    let policy = Policy::new(&CacheConfig::default(), None);
    let mut errs = Vec::new();
    let mut checked = 0;
    for row in table() {
        let no_patterns = BTreeMap::new();
        let patterns = ops
            .get(&(row.method.to_string(), row.path.clone()))
            .unwrap_or(&no_patterns);
        // Letta leaves /v1/admin/* and /v1/auth out of /latest (`app.py:860-864`).
        let latest = !(row.path.starts_with("/v1/admin/") || row.path == "/v1/auth");
        for c in concretes(&row.path, patterns) {
            errs.extend(check(&row, &policy, "/v1", &c, Mode::Exact));
            checked += 1;
            if latest {
                errs.extend(check(&row, &policy, "/latest", &c, Mode::Exact));
                checked += 1;
            }
        }
    }
    assert!(
        errs.is_empty(),
        "{} disagreements with Letta 0.16.8 (of {checked} requests):\n{}",
        errs.len(),
        errs.join("\n")
    );
    assert!(checked > 500, "only {checked} requests checked");
}

#[test]
fn the_shipped_config_file_plans_like_the_defaults_on_every_route() {
    // The same table through `config/letta-proxy.toml` as users get it.
    let text = include_str!("../config/letta-proxy.toml");
    let file = letta_proxy::Config::from_toml(text, "config/letta-proxy.toml", std::iter::empty())
        .expect("the shipped config loads");
    let shipped = Policy::new(&file.cache, None);
    let defaults = Policy::new(&CacheConfig::default(), None);
    let ops = openapi();
    let none = HeaderMap::new();
    for row in table() {
        let no_patterns = BTreeMap::new();
        let patterns = ops
            .get(&(row.method.to_string(), row.path.clone()))
            .unwrap_or(&no_patterns);
        for c in concretes(&row.path, patterns) {
            let r = classify(&c.path);
            assert_eq!(
                shipped.plan(&row.method, &c.path, &r, &none),
                defaults.plan(&row.method, &c.path, &r, &none),
                "{} {}",
                row.method,
                c.path
            );
        }
    }
}

/// Whether Letta's route `pattern` matches the concrete `path` (`{x}` is one
/// non-empty segment, `{x:path}` the rest), as Starlette's path regexes do.
fn route_matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = path.split('/').collect();
    for (i, p) in pat.iter().enumerate() {
        if p.ends_with(":path}") {
            return segs.len() > i && segs[i..].iter().any(|s| !s.is_empty());
        }
        let Some(s) = segs.get(i) else {
            return false;
        };
        let ok = if p.starts_with('{') {
            !s.is_empty()
        } else {
            p == s
        };
        if !ok {
            return false;
        }
    }
    pat.len() == segs.len()
}

#[test]
fn names_that_are_letta_words_are_not_taken_for_them() {
    // Letta leaves many parameters free-form (tool, MCP server and file names,
    // labels, run ids...). A user may call a tool `search` or an MCP server
    // `connect`: the proxy must not then take a write for a read-only search
    // or a stream. Every free-form parameter of every route gets every word of
    // Letta's paths in turn, wherever Letta itself routes the result to that
    // same route (no other route of the method matches it).
    let ops = openapi();
    let rows = table();
    let policy = Policy::new(&CacheConfig::default(), None);
    let words: BTreeSet<&str> = rows
        .iter()
        .flat_map(|r| r.path.split('/'))
        .filter(|s| !s.is_empty() && !s.starts_with('{') && *s != "v1")
        .collect();
    let mut errs = Vec::new();
    let mut checked = 0;
    for row in &rows {
        let Some(patterns) = ops.get(&(row.method.to_string(), row.path.clone())) else {
            continue; // the hidden catch-alls take anything anyway
        };
        let free: Vec<&String> = patterns
            .iter()
            .filter(|(_, pattern)| pattern.is_empty())
            .map(|(name, _)| name)
            .collect();
        for name in free {
            for word in &words {
                let mut p = patterns.clone();
                // A pattern that only this word matches.
                p.insert(name.clone(), String::new());
                let path = row.path.replace(&format!("{{{name}}}"), word);
                let c = concretes(&path, &p).into_iter().next().expect("a path");
                let mut c = c;
                c.params.insert(name.clone(), word.to_string());
                let same_method: Vec<&Row> = rows
                    .iter()
                    .filter(|r| r.method == row.method && route_matches(&r.path, &c.path))
                    .collect();
                if same_method.len() != 1 {
                    continue; // Letta's route order decides; another route's row covers it
                }
                errs.extend(check(row, &policy, "/v1", &c, Mode::NameIsAWord));
                errs.extend(check(row, &policy, "/latest", &c, Mode::NameIsAWord));
                checked += 2;
            }
        }
    }
    assert!(
        errs.is_empty(),
        "{} misreadings (of {checked} requests):\n{}",
        errs.len(),
        errs.join("\n")
    );
    assert!(checked > 1000, "only {checked} requests checked");
}
