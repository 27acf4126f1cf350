//! What the proxy knows about Letta's routes, from the path alone.
//!
//! [`classify`] turns a request path into a [`Route`]: a template for metric labels
//! (`/v1/agents/{agent_id}/messages`; never a raw id, so label cardinality stays
//! bounded), the agent and block the request targets (for affinity, write ordering
//! and cache invalidation), what kind of route it is ([`RouteKind`], which the
//! cache matches on) and whether it only reads. It allocates only the first time a
//! template is seen: templates are interned.
//!
//! Letta 0.16.8 serves every route under `/v1` and again under `/latest`
//! (`server/rest_api/app.py:857`); both are classified alike. Paths are
//! classified as sent; the hygiene rules (`server::hygiene`) refuse the
//! percent-encodings that Letta would decode into something else first, so the
//! agent seen here is the agent Letta writes. `tests/routes.rs` checks this file
//! against every operation of Letta 0.16.8's OpenAPI document.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use http::Method;

/// Most path segments kept in a template; deeper paths collapse to their prefix + `/…`.
const MAX_TEMPLATE_SEGMENTS: usize = 8;
/// Most distinct templates interned; past it, new shapes are labelled `other`.
const MAX_TEMPLATES: usize = 1024;

/// The label used for paths outside Letta's API and for overflow.
pub const OTHER: &str = "other";

/// The routes the proxy treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Anything else under the API.
    Api,
    /// Outside `/v1` and `/latest`.
    Outside,
    /// `/v1/agents` or `/v1/agents/`: the agent collection.
    Agents,
    /// `/v1/agents/{agent_id}`: one agent's state.
    Agent,
    /// `/v1/agents/{agent_id}/core-memory`.
    AgentCoreMemory,
    /// `/v1/agents/{agent_id}/core-memory/blocks`.
    AgentCoreMemoryBlocks,
    /// `/v1/agents/{agent_id}/core-memory/blocks/{block_label}` (a label or an id).
    AgentCoreMemoryBlock,
    /// `/v1/agents/{agent_id}/messages[/stream|/async]`: an agent turn when written.
    AgentMessages,
    /// `/v1/blocks/{block_id}`.
    Block,
    /// Letta's hidden pass-through routes (`/v1/git/…`, `/v1/anthropic/…`,
    /// `/v1/zai/…`): they forward almost every request header to another
    /// service (`routers/v1/git_http.py:250`, `anthropic.py:269`, `zai.py:265`).
    PassThrough,
    /// GETs with side effects: `/v1/tools/mcp/oauth/callback` stores an OAuth
    /// result (`tools.py:858`), `/v1/mcp-servers/connect/{id}` opens an OAuth
    /// session and streams (`mcp_servers.py:215`).
    SideEffect,
}

/// A classified request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// Path template for metric labels, e.g. `/v1/agents/{agent_id}/messages`.
    pub template: &'static str,
    pub kind: RouteKind,
    /// The `agent-…` id the request acts on: `/agents/{agent_id}`,
    /// `/_internal_agents/{agent_id}`, `/voice-beta/{agent_id}`, `/git/{agent_id}`,
    /// or a conversation addressed by its agent (`/conversations/agent-…`).
    pub agent_id: Option<&'a str>,
    /// The `block-…` id when the path names a block (`/blocks/{block_id}`).
    pub block_id: Option<&'a str>,
    /// Whether the path is a POST that only reads (searches, exports, previews,
    /// stream replays, schema generation, provider and MCP checks, `/v1/auth`):
    /// safe to retry and to run beside an agent's writes, never cached.
    pub read_only_post: bool,
    /// Whether the route always answers with a stream (Server-Sent Events).
    pub streaming: bool,
}

impl Route<'_> {
    /// Whether `method` on this route only reads (GET, HEAD, OPTIONS, or a read-only POST).
    pub fn is_read(&self, method: &Method) -> bool {
        matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
            || (*method == Method::POST && self.read_only_post)
    }

    /// Whether no cache rule may ever store this route's answers.
    pub fn never_cached(&self) -> bool {
        matches!(self.kind, RouteKind::PassThrough | RouteKind::SideEffect) || self.streaming
    }

    /// The key write ordering serialises on: the agent, else the block.
    pub fn write_key(&self) -> Option<&str> {
        self.agent_id.or(self.block_id)
    }
}

/// A [`Route`] that owns nothing borrowed: the ids are kept as byte ranges of
/// the path. Computed once per request and handed down the stack in the
/// request's extensions, so every layer reads the same classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    template: &'static str,
    kind: RouteKind,
    agent: Option<(u16, u16)>,
    block: Option<(u16, u16)>,
    read_only_post: bool,
    streaming: bool,
}

impl Classified {
    /// Classifies `path`.
    pub fn of(path: &str) -> Classified {
        let r = classify(path);
        let range = |id: Option<&str>| {
            id.and_then(|id| {
                let start = id.as_ptr() as usize - path.as_ptr() as usize;
                Some((
                    u16::try_from(start).ok()?,
                    u16::try_from(start + id.len()).ok()?,
                ))
            })
        };
        Classified {
            template: r.template,
            kind: r.kind,
            agent: range(r.agent_id),
            block: range(r.block_id),
            read_only_post: r.read_only_post,
            streaming: r.streaming,
        }
    }

    /// The route of `path`, which must be the path this was computed from.
    pub fn route<'a>(&self, path: &'a str) -> Route<'a> {
        let id = |r: Option<(u16, u16)>| r.and_then(|(a, b)| path.get(a as usize..b as usize));
        Route {
            template: self.template,
            kind: self.kind,
            agent_id: id(self.agent),
            block_id: id(self.block),
            read_only_post: self.read_only_post,
            streaming: self.streaming,
        }
    }

    /// The route of `req`: from its extensions when a layer in front classified
    /// it, else computed now.
    pub fn of_request<B>(req: &http::Request<B>) -> Route<'_> {
        let path = req.uri().path();
        match req.extensions().get::<Classified>() {
            Some(c) => c.route(path),
            None => classify(path),
        }
    }
}

/// Classifies `path` (no query string).
pub fn classify(path: &str) -> Route<'_> {
    let mut route = Route {
        template: OTHER,
        kind: RouteKind::Outside,
        agent_id: None,
        block_id: None,
        read_only_post: false,
        streaming: false,
    };
    let (prefix, rest) = match path.strip_prefix("/v1") {
        Some(rest) => (Prefix::V1, rest),
        None => match path.strip_prefix("/latest") {
            Some(rest) => (Prefix::Latest, rest),
            None => return route,
        },
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return route;
    }
    route.kind = RouteKind::Api;
    // Build the template on the stack as segment kinds, then intern it.
    let mut shape: [Seg; MAX_TEMPLATE_SEGMENTS] = [Seg::None; MAX_TEMPLATE_SEGMENTS];
    let mut n = 0;
    let mut truncated = false;
    // The first non-empty segments (the route's kind), and the last two.
    let mut words: [&str; 6] = [""; 6];
    let mut count = 0;
    let (mut prev, mut prev2): (Option<&str>, Option<&str>) = (None, None);
    for seg in rest.split('/').skip(1) {
        if seg.is_empty() {
            // Trailing slash (`/v1/agents/`) or `//`: part of the template, Letta
            // routes `/x` and `/x/` differently.
            if n < MAX_TEMPLATE_SEGMENTS {
                shape[n] = Seg::Empty;
                n += 1;
            }
            continue;
        }
        match prev {
            Some("agents" | "_internal_agents" | "voice-beta" | "conversations" | "git")
                if seg.starts_with("agent-") && route.agent_id.is_none() =>
            {
                route.agent_id = Some(seg)
            }
            Some("blocks" | "_internal_blocks")
                if seg.starts_with("block-") && route.block_id.is_none() =>
            {
                route.block_id = Some(seg)
            }
            _ => {}
        }
        let kind = segment_kind(seg, prev, prev2);
        if n < MAX_TEMPLATE_SEGMENTS {
            shape[n] = kind;
            n += 1;
        } else {
            truncated = true;
        }
        if let Some(w) = words.get_mut(count) {
            *w = seg;
        }
        count += 1;
        (prev2, prev) = (prev, Some(seg));
    }
    let head = &words[..count.min(words.len())];
    route.kind = kind_of(head, count, route.agent_id.is_some());
    route.read_only_post = read_only_post(head, count, prev);
    route.streaming = prev == Some("stream")
        || (words[0] == "tools" && words[1] == "mcp" && prev == Some("connect"))
        || (words[0] == "mcp-servers" && words[1] == "connect");
    route.template = intern((prefix, shape, n, truncated));
    route
}

/// The route's kind from its first words (`count` non-empty segments in all).
fn kind_of(words: &[&str], count: usize, names_agent: bool) -> RouteKind {
    let w = |i: usize| words.get(i).copied().unwrap_or("");
    match (w(0), count) {
        ("git" | "anthropic" | "zai", _) => RouteKind::PassThrough,
        ("tools", _) if w(1) == "mcp" && w(2) == "oauth" => RouteKind::SideEffect,
        ("mcp-servers", _) if w(1) == "connect" => RouteKind::SideEffect,
        ("agents", 1) => RouteKind::Agents,
        ("agents", _) if !(names_agent && w(1).starts_with("agent-")) => RouteKind::Api,
        ("agents", 2) => RouteKind::Agent,
        ("agents", 3) if w(2) == "core-memory" => RouteKind::AgentCoreMemory,
        ("agents", 4) if w(2) == "core-memory" && w(3) == "blocks" => {
            RouteKind::AgentCoreMemoryBlocks
        }
        ("agents", 5) if w(2) == "core-memory" && w(3) == "blocks" => {
            // `…/blocks/attach/{id}` is 6 segments: a label here.
            RouteKind::AgentCoreMemoryBlock
        }
        ("agents", 3) if w(2) == "messages" => RouteKind::AgentMessages,
        ("agents", 4) if w(2) == "messages" && matches!(w(3), "stream" | "async") => {
            RouteKind::AgentMessages
        }
        ("blocks", 2) if w(1).starts_with("block-") => RouteKind::Block,
        _ => RouteKind::Api,
    }
}

/// Letta's POSTs that only read (Letta 0.16.8 source, cited in `tests/data/letta-0.16.8-routes.tsv`).
fn read_only_post(words: &[&str], count: usize, last: Option<&str>) -> bool {
    let w = |i: usize| words.get(i).copied().unwrap_or("");
    let first = w(0);
    match last {
        // tools, agents/messages, messages, passages, archival memory.
        Some("search") => true,
        // agents/{id}/export, …/messages/preview-raw-payload.
        Some("export" | "preview-raw-payload") => true,
        // Replays of a running stream: runs/{id}/stream, conversations/{id}/stream.
        Some("stream") => matches!(first, "runs" | "conversations") && count == 3,
        // Pure functions of the body, or LLM calls that persist nothing.
        Some("generate-schema" | "generate-tool") => first == "tools",
        Some("generate") => first == "agents" && count == 3,
        // Upstream key and MCP server checks.
        Some("check") => first == "providers",
        Some("test") => first == "tools" && w(1) == "mcp",
        // The password / API-key check.
        Some("auth") => count == 1,
        _ => false,
    }
}

/// Which API prefix a path used (kept in its template).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Prefix {
    V1,
    Latest,
}

/// What one path segment contributes to a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Seg {
    None,
    /// A trailing or doubled slash.
    Empty,
    /// A word of Letta's API, kept as is.
    Word(&'static str),
    /// An id or free-form value, shown as `{name}`.
    Param(&'static str),
}

fn segment_kind(seg: &str, prev: Option<&str>, prev2: Option<&str>) -> Seg {
    if let Some(word) = known_word(seg) {
        return Seg::Word(word);
    }
    if let Some(param) = id_param(seg) {
        return Seg::Param(param);
    }
    // Core-memory blocks are addressed by label (`human`, `persona`, any name).
    if prev == Some("blocks") && prev2 == Some("core-memory") {
        return Seg::Param("block_label");
    }
    Seg::Param("param")
}

/// `<type>-<uuid>` ids map to `{type_id}`; anything else is not an id.
fn id_param(seg: &str) -> Option<&'static str> {
    let (prefix, tail) = seg.split_once('-')?;
    // A Letta id's tail is a UUID (36 chars); be lenient about its exact form.
    if tail.len() < 8 || !tail.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return None;
    }
    Some(match prefix {
        "agent" => "agent_id",
        "block" => "block_id",
        "message" => "message_id",
        "source" => "source_id",
        "folder" => "folder_id",
        "file" => "file_id",
        "tool" => "tool_id",
        "run" => "run_id",
        "step" => "step_id",
        "job" => "job_id",
        "identity" => "identity_id",
        "group" => "group_id",
        "passage" => "passage_id",
        "provider" => "provider_id",
        "sandbox" => "sandbox_id",
        "archive" => "archive_id",
        "conversation" | "conv" => "conversation_id",
        _ => "id",
    })
}

fn known_word(seg: &str) -> Option<&'static str> {
    // Path words of Letta 0.16.8's REST API (every literal segment of its
    // OpenAPI document and hidden routes; `tests/routes.rs` checks the list).
    // Anything else in a word position becomes `{param}`, which keeps metric
    // label values to this fixed vocabulary. A `match` compiles to
    // length-and-bytes dispatch, not a scan of the list.
    macro_rules! words {
        ($($w:literal)|*) => {
            match seg {
                $($w => Some($w),)*
                _ => None,
            }
        };
    }
    words!(
        "_internal_agents"
            | "_internal_blocks"
            | "_internal_runs"
            | "_internal_search"
            | "_internal_templates"
            | "active"
            | "add-base-tools"
            | "admin"
            | "agents"
            | "anthropic"
            | "approval"
            | "archival-memory"
            | "archives"
            | "async"
            | "attach"
            | "auth"
            | "batch"
            | "batches"
            | "blocks"
            | "cache-warm"
            | "callback"
            | "cancel"
            | "capture"
            | "chat"
            | "check"
            | "close"
            | "close-all"
            | "compact"
            | "completions"
            | "connect"
            | "context"
            | "conversations"
            | "core-memory"
            | "count"
            | "default"
            | "deployment"
            | "detach"
            | "e2b"
            | "embedding"
            | "embeddings"
            | "environment-variable"
            | "execute"
            | "export"
            | "feedback"
            | "files"
            | "folders"
            | "fork"
            | "generate"
            | "generate-schema"
            | "generate-tool"
            | "git"
            | "groups"
            | "health"
            | "identities"
            | "import"
            | "jobs"
            | "local"
            | "mcp"
            | "mcp-servers"
            | "messages"
            | "metadata"
            | "metrics"
            | "models"
            | "name"
            | "oauth"
            | "open"
            | "orgs"
            | "passages"
            | "preview-raw-payload"
            | "properties"
            | "providers"
            | "ready"
            | "recompile"
            | "recreate-venv"
            | "refresh"
            | "reset-messages"
            | "resync"
            | "run"
            | "runs"
            | "sandbox-config"
            | "search"
            | "servers"
            | "sources"
            | "steps"
            | "stream"
            | "summarize"
            | "system-prompt"
            | "tags"
            | "telemetry"
            | "test"
            | "tools"
            | "total_storage_size"
            | "trace"
            | "transaction"
            | "upload"
            | "usage"
            | "users"
            | "v1"
            | "voice-beta"
            | "zai"
    )
}

/// A template's shape: its prefix, segments, how many are used, whether it was
/// cut. `Copy` and fixed-size, so looking a template up allocates nothing.
type Shape = (Prefix, [Seg; MAX_TEMPLATE_SEGMENTS], usize, bool);
/// Interned templates by shape. Looked up on every request with a key of a few
/// machine words: FxHash, not SipHash (no untrusted keys reach the table: a
/// shape is built from a fixed vocabulary).
type Templates = HashMap<Shape, &'static str, rustc_hash::FxBuildHasher>;

fn intern(key: Shape) -> &'static str {
    static TABLE: OnceLock<RwLock<Templates>> = OnceLock::new();
    let table = TABLE.get_or_init(Default::default);
    let (prefix, segs, n, truncated) = key;
    let shape = &segs[..n];
    if let Some(t) = table.read().expect("route table poisoned").get(&key) {
        return t;
    }
    let mut w = table.write().expect("route table poisoned");
    if let Some(t) = w.get(&key) {
        return t;
    }
    if w.len() >= MAX_TEMPLATES {
        return OTHER;
    }
    let mut s = String::from(match prefix {
        Prefix::V1 => "/v1",
        Prefix::Latest => "/latest",
    });
    for seg in shape {
        s.push('/');
        match seg {
            Seg::None | Seg::Empty => {}
            Seg::Word(word) => s.push_str(word),
            Seg::Param(p) => {
                s.push('{');
                s.push_str(p);
                s.push('}');
            }
        }
    }
    if truncated {
        s.push_str("/…");
    }
    // Leaked once per distinct template; bounded by MAX_TEMPLATES.
    let t: &'static str = Box::leak(s.into_boxed_str());
    w.insert(key, t);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "agent-6f1e3c2a-1b2c-4d5e-8f90-0123456789ab";
    const B: &str = "block-0a1b2c3d-1b2c-4d5e-8f90-0123456789ab";

    #[test]
    fn templates_never_contain_ids() {
        let table = [
            ("/v1/agents/", "/v1/agents/"),
            ("/v1/agents", "/v1/agents"),
            (&format!("/v1/agents/{A}") as &str, "/v1/agents/{agent_id}"),
            (
                &format!("/v1/agents/{A}/messages"),
                "/v1/agents/{agent_id}/messages",
            ),
            (
                &format!("/v1/agents/{A}/messages/stream"),
                "/v1/agents/{agent_id}/messages/stream",
            ),
            (
                &format!("/v1/agents/{A}/core-memory/blocks/human"),
                "/v1/agents/{agent_id}/core-memory/blocks/{block_label}",
            ),
            (&format!("/v1/blocks/{B}"), "/v1/blocks/{block_id}"),
            (
                "/v1/runs/run-0a1b2c3d-1b2c-4d5e-8f90-0123456789ab/stream",
                "/v1/runs/{run_id}/stream",
            ),
            ("/v1/tools/whatever-name", "/v1/tools/{param}"),
            ("/v1/health/", "/v1/health/"),
            (&format!("/latest/agents/{A}"), "/latest/agents/{agent_id}"),
            ("/metrics-not-ours", OTHER),
            ("/v1x/agents", OTHER),
            ("/latestx", OTHER),
            ("/", OTHER),
        ];
        for (path, want) in table {
            assert_eq!(classify(path).template, want, "{path}");
        }
    }

    #[test]
    fn ids_and_kinds_are_extracted() {
        let p = format!("/v1/agents/{A}/core-memory/blocks/human");
        let r = classify(&p);
        assert_eq!(r.agent_id, Some(A));
        assert_eq!(r.block_id, None);
        assert_eq!(r.kind, RouteKind::AgentCoreMemoryBlock);
        let p = format!("/v1/blocks/{B}");
        assert_eq!(classify(&p).block_id, Some(B));
        assert_eq!(classify(&p).kind, RouteKind::Block);
        let p = format!("/v1/agents/{A}/messages/stream");
        let r = classify(&p);
        assert!(r.streaming && !r.is_read(&Method::POST));
        assert_eq!(r.kind, RouteKind::AgentMessages);
        assert!(classify("/v1/runs/run-0a1b2c3d-aaaa/stream").is_read(&Method::POST));
        assert!(classify(&format!("/v1/agents/{A}/archival-memory/search")).is_read(&Method::POST));
        assert!(!classify(&format!("/v1/agents/{A}/messages")).is_read(&Method::POST));
        assert!(classify(&format!("/v1/agents/{A}/messages")).is_read(&Method::GET));
        // Not an agent id: no affinity key.
        assert_eq!(classify("/v1/agents/search").agent_id, None);
        // The same routes under /latest.
        let p = format!("/latest/agents/{A}/messages");
        assert_eq!(classify(&p).agent_id, Some(A));
        assert_eq!(classify(&p).kind, RouteKind::AgentMessages);
        // A conversation addressed by its agent writes to that agent.
        let p = format!("/v1/conversations/{A}/messages");
        assert_eq!(classify(&p).agent_id, Some(A));
        assert_eq!(classify("/v1/git/x/info/refs").kind, RouteKind::PassThrough);
        assert!(classify("/v1/git/x/info/refs").never_cached());
    }

    #[test]
    fn a_classification_travels_without_borrowing() {
        let p = format!("/v1/agents/{A}/core-memory/blocks/human");
        let c = Classified::of(&p);
        assert_eq!(c.route(&p), classify(&p));
        let p = format!("/v1/blocks/{B}");
        assert_eq!(Classified::of(&p).route(&p), classify(&p));
    }

    #[test]
    fn deep_and_odd_paths_stay_bounded() {
        let deep = "/v1/a/b/c/d/e/f/g/h/i/j/k";
        let t = classify(deep).template;
        assert!(t.ends_with("/…"), "{t}");
        assert!(!t.contains("/k"), "{t}");
        // Free-form words never become labels.
        let t1 = classify("/v1/secret-name-1").template;
        let t2 = classify("/v1/secret-name-2").template;
        assert_eq!(t1, t2);
    }
}
