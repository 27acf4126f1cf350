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
//! classified as sent; the hygiene rules (`gateway::hygiene`) refuse the
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
    /// GETs that write: `/v1/tools/mcp/oauth/callback` stores an OAuth result
    /// (`tools.py:858`), `/v1/mcp-servers/connect/{id}` opens an OAuth session
    /// and streams (`mcp_servers.py:215`), `/v1/sources/{id}/files[/{file_id}]`
    /// refresh the files' processing status (`sources.py:387,415`). Never
    /// cached; not reads (not sent twice).
    SideEffect,
    /// GETs whose answer Letta fetches live from another service:
    /// `/v1/tools/mcp/servers/{name}/tools` asks the MCP server
    /// (`tools.py:435`). Reads, never cached.
    Live,
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
    /// Agents named only in a body, a query or Letta's database (a `conv-…`
    /// conversation, a group's members) are not seen here.
    pub agent_id: Option<&'a str>,
    /// The `block-…` id when the path names a block by id: `/blocks/{block_id}`,
    /// `/_internal_blocks/{block_id}`, `…/blocks/attach|detach/{block_id}` (a
    /// block named by label under `core-memory/blocks/` is not an id).
    pub block_id: Option<&'a str>,
    /// Whether the path is a POST that only reads (searches, exports, previews,
    /// stream replays, schema generation, provider and MCP checks, `/v1/auth`):
    /// safe to retry and to run beside an agent's writes, never cached.
    pub read_only_post: bool,
    /// Whether the route always answers with a stream (Server-Sent Events).
    pub streaming: bool,
}

impl Route<'_> {
    /// Whether `method` on this route only reads (GET, HEAD, OPTIONS, or a
    /// read-only POST), so it may be sent twice and run beside an agent's
    /// writes. A GET that writes ([`RouteKind::SideEffect`]) is not a read.
    pub fn is_read(&self, method: &Method) -> bool {
        match *method {
            Method::OPTIONS => true,
            Method::GET | Method::HEAD => self.kind != RouteKind::SideEffect,
            Method::POST => self.read_only_post,
            _ => false,
        }
    }

    /// Whether no cache rule may ever store this route's answers.
    pub fn never_cached(&self) -> bool {
        matches!(
            self.kind,
            RouteKind::PassThrough | RouteKind::SideEffect | RouteKind::Live
        ) || self.streaming
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

/// Most leading words of a path the rules below look at: the deepest Letta
/// route (`/v1/tools/mcp/servers/{name}/tools/{tool}/execute`) has 7.
const MAX_WORDS: usize = 8;

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
    // Build the template on the stack as segment kinds, then intern it.
    let mut shape: [Seg; MAX_TEMPLATE_SEGMENTS] = [Seg::None; MAX_TEMPLATE_SEGMENTS];
    let mut n = 0;
    let mut truncated = false;
    // The first non-empty segments, which the rules below read by position.
    let mut words: [&str; MAX_WORDS] = [""; MAX_WORDS];
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
    let p = Path { words, count };
    route.agent_id = p.agent();
    route.block_id = p.block();
    route.kind = p.kind(route.agent_id.is_some());
    route.read_only_post = p.read_only_post();
    route.streaming = p.streaming();
    route.template = intern((prefix, shape, n, truncated));
    route
}

/// A path's words (non-empty segments after the prefix) for the rules below,
/// which follow Letta 0.16.8's routers by position and count, so a name chosen
/// by a user (a tool called `search`, an MCP server called `connect`) is never
/// taken for one of Letta's words. Each rule cites its Letta route; the table
/// in `tests/data/letta-0.16.8-routes.tsv` checks them all.
struct Path<'a> {
    words: [&'a str; MAX_WORDS],
    /// Non-empty segments in all (may exceed `MAX_WORDS`).
    count: usize,
}

impl<'a> Path<'a> {
    fn w(&self, i: usize) -> &'a str {
        self.words.get(i).copied().unwrap_or("")
    }

    /// The agent Letta acts on when the path names it.
    fn agent(&self) -> Option<&'a str> {
        let id = self.w(1);
        let named = match self.w(0) {
            // `/agents/{agent_id}/…`, `/_internal_agents/{agent_id}/…`,
            // `/voice-beta/{agent_id}/…`, `/git/{agent_id}/state.git/…`
            // (`git_http.py:204-218`).
            "agents" | "_internal_agents" | "voice-beta" | "git" => true,
            // `/conversations/agent-…/…`: the deprecated form that acts on the
            // agent itself (`validators.py:47-73`, `conversations.py:143-149`).
            "conversations" => true,
            _ => false,
        };
        (named && id.starts_with("agent-")).then_some(id)
    }

    /// The block Letta acts on when the path names it by id (not by label).
    fn block(&self) -> Option<&'a str> {
        let w = |i| self.w(i);
        let id = match (w(0), self.count) {
            // `/blocks/{block_id}/…`, `/_internal_blocks/{block_id}/…`.
            ("blocks" | "_internal_blocks", _) => w(1),
            // `/agents/{agent_id}/core-memory/blocks/attach|detach/{block_id}`.
            ("agents", 6) if w(2) == "core-memory" && w(3) == "blocks" => {
                if matches!(w(4), "attach" | "detach") {
                    w(5)
                } else {
                    ""
                }
            }
            // `/groups/{group_id}/blocks/attach|detach/{block_id}`.
            ("groups", 5) if w(2) == "blocks" && matches!(w(3), "attach" | "detach") => w(4),
            _ => "",
        };
        id.starts_with("block-").then_some(id)
    }

    fn kind(&self, names_agent: bool) -> RouteKind {
        let w = |i| self.w(i);
        match (w(0), self.count) {
            ("git" | "anthropic" | "zai", _) => RouteKind::PassThrough,
            // `tools.py:858`: stores the OAuth result.
            ("tools", 4) if w(1) == "mcp" && w(2) == "oauth" && w(3) == "callback" => {
                RouteKind::SideEffect
            }
            // `mcp_servers.py:215`: opens an OAuth session and streams.
            ("mcp-servers", 3) if w(1) == "connect" => RouteKind::SideEffect,
            // `sources.py:387,415`: the file-status refresh writes.
            ("sources", 3 | 4) if w(2) == "files" => RouteKind::SideEffect,
            // `tools.py:435`: listed live by the external MCP server.
            ("tools", 5) if w(1) == "mcp" && w(2) == "servers" && w(4) == "tools" => {
                RouteKind::Live
            }
            ("agents", 1) => RouteKind::Agents,
            ("agents", _) if !names_agent => RouteKind::Api,
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

    /// Letta's POSTs that only read (cited in `tests/data/letta-0.16.8-routes.tsv`).
    fn read_only_post(&self) -> bool {
        let w = |i| self.w(i);
        match (self.count, w(0)) {
            // `auth/index.py:25`: the password / API-key check.
            (1, "auth") => true,
            // Searches: `tools.py:274`, `messages.py:65`, `passages.py:82`.
            (2, "tools" | "messages" | "passages") if w(1) == "search" => true,
            // `tools.py:772` (a pure function of the body), `tools.py:920` (an
            // LLM call that persists nothing).
            (2, "tools") => matches!(w(1), "generate-schema" | "generate-tool"),
            // `providers.py:102,119`: the key is checked upstream, nothing stored.
            (2, "providers") => w(1) == "check",
            (3, "providers") => w(2) == "check",
            // `agents.py:351` (export), `agents.py:1959` (no persistence),
            // `agents.py:2028` (search; `messages` is not an agent id there).
            (3, "agents") => {
                matches!(w(2), "export" | "generate") || (w(1) == "messages" && w(2) == "search")
            }
            // Replays of a running stream: `runs.py:324`, `conversations.py:658`.
            (3, "runs" | "conversations") => w(2) == "stream",
            // `agents.py:2379`, `conversations.py:562`: build the LLM request only.
            (4, "agents" | "conversations") => w(2) == "messages" && w(3) == "preview-raw-payload",
            // `tools.py:620`: connects to the MCP server, stores nothing.
            (4, "tools") => w(1) == "mcp" && w(2) == "servers" && w(3) == "test",
            _ => false,
        }
    }

    /// Whether the route always answers with Server-Sent Events.
    fn streaming(&self) -> bool {
        let w = |i| self.w(i);
        match (self.count, w(0)) {
            // `agents.py:1866` forces streaming.
            (4, "agents") => w(2) == "messages" && w(3) == "stream",
            // `runs.py:408`, `conversations.py:830`.
            (3, "runs" | "conversations") => w(2) == "stream",
            // `tools.py:764`.
            (4, "tools") => w(1) == "mcp" && w(2) == "servers" && w(3) == "connect",
            // `mcp_servers.py:310`: a GET that streams.
            (3, "mcp-servers") => w(1) == "connect",
            _ => false,
        }
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
        "sandbox" => "sandbox_config_id",
        "mcp_server" => "mcp_server_id",
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
        // Searches by POST are reads; GET-only search routes are not read-only POSTs.
        assert!(classify("/v1/agents/messages/search").is_read(&Method::POST));
        assert!(!classify(&format!("/v1/agents/{A}/archival-memory/search")).is_read(&Method::POST));
        // A user's name that happens to be one of Letta's words is not taken for it.
        assert!(!classify("/v1/tools/mcp/servers/srv/search").is_read(&Method::POST));
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
