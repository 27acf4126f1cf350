//! What the proxy knows about Letta's routes, from the path alone.
//!
//! [`classify`] turns a request path into a [`Route`]: a template for metric labels
//! (`/v1/agents/{agent_id}/messages`; never a raw id, so label cardinality stays
//! bounded), the agent and block the request targets (for affinity, write ordering
//! and cache invalidation) and whether it only reads. It allocates only the first
//! time a template is seen: templates are interned.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use http::Method;

/// Most path segments kept in a template; deeper paths collapse to their prefix + `/…`.
const MAX_TEMPLATE_SEGMENTS: usize = 8;
/// Most distinct templates interned; past it, new shapes are labelled `other`.
const MAX_TEMPLATES: usize = 1024;

/// The label used for paths outside Letta's API and for overflow.
pub const OTHER: &str = "other";

/// A classified request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// Path template for metric labels, e.g. `/v1/agents/{agent_id}/messages`.
    pub template: &'static str,
    /// `agent-…` id when the path is under `/v1/agents/{agent_id}`.
    pub agent_id: Option<&'a str>,
    /// `block-…` id when the path names a block.
    pub block_id: Option<&'a str>,
    /// Whether the path is a read-only POST (`…/search`, `…/export`,
    /// `…/preview-raw-payload`, `/v1/runs/{id}/stream`): safe to retry, not to cache.
    pub read_only_post: bool,
    /// Whether the route streams Server-Sent Events by design.
    pub streaming: bool,
}

impl Route<'_> {
    /// Whether `method` on this route only reads (GET, HEAD, OPTIONS, or a read-only POST).
    pub fn is_read(&self, method: &Method) -> bool {
        matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
            || (*method == Method::POST && self.read_only_post)
    }
}

/// Classifies `path` (no query string).
pub fn classify(path: &str) -> Route<'_> {
    let mut route = Route {
        template: OTHER,
        agent_id: None,
        block_id: None,
        read_only_post: false,
        streaming: false,
    };
    let Some(rest) = path.strip_prefix("/v1") else {
        return route;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return route;
    }
    // Build the template on the stack as segment kinds, then intern it.
    let mut shape: [Seg; MAX_TEMPLATE_SEGMENTS] = [Seg::None; MAX_TEMPLATE_SEGMENTS];
    let mut n = 0;
    let mut truncated = false;
    // The last three non-empty segments, oldest first.
    let mut window: [Option<&str>; 3] = [None; 3];
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
        let (prev2, prev) = (window[1], window[2]);
        match prev {
            Some("agents") if seg.starts_with("agent-") => route.agent_id = Some(seg),
            Some("blocks") if seg.starts_with("block-") => route.block_id = Some(seg),
            _ => {}
        }
        let kind = segment_kind(seg, prev, prev2);
        if n < MAX_TEMPLATE_SEGMENTS {
            shape[n] = kind;
            n += 1;
        } else {
            truncated = true;
        }
        window = [window[1], window[2], Some(seg)];
    }
    let last = window[2];
    route.read_only_post = matches!(last, Some("search" | "export" | "preview-raw-payload"))
        || (last == Some("stream") && window[0] == Some("runs"));
    route.streaming = last == Some("stream");
    route.template = intern((shape, n, truncated));
    route
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
        "conversation" | "conv" => "conversation_id",
        _ => "id",
    })
}

fn known_word(seg: &str) -> Option<&'static str> {
    // Path words of Letta's REST API. Anything else in a word position becomes
    // `{param}`, which keeps metric label values to this fixed vocabulary. A
    // `match` compiles to length-and-bytes dispatch, not a scan of the list.
    macro_rules! words {
        ($($w:literal)|*) => {
            match seg {
                $($w => Some($w),)*
                _ => None,
            }
        };
    }
    words!(
        "agents"
            | "blocks"
            | "messages"
            | "stream"
            | "core-memory"
            | "archival-memory"
            | "archival"
            | "memory"
            | "tools"
            | "sources"
            | "folders"
            | "files"
            | "runs"
            | "steps"
            | "jobs"
            | "identities"
            | "models"
            | "embedding"
            | "embeddings"
            | "health"
            | "ready"
            | "search"
            | "export"
            | "import"
            | "preview-raw-payload"
            | "context"
            | "groups"
            | "providers"
            | "templates"
            | "passages"
            | "attach"
            | "detach"
            | "reset-messages"
            | "async"
            | "count"
            | "upload"
            | "usage"
            | "cancel"
            | "summarize"
            | "properties"
            | "mcp-servers"
            | "sandbox-config"
            | "tags"
            | "users"
            | "orgs"
            | "admin"
            | "archives"
            | "batches"
            | "voice-beta"
            | "chat"
            | "completions"
            | "conversations"
            | "feedback"
            | "metadata"
            | "trace"
            | "telemetry"
            | "llm"
            | "schemas"
            | "add-base-tools"
            | "pending"
            | "active"
            | "ids"
            | "compact"
            | "internal-templates"
            | "client-side-access-tokens"
    )
}

/// A template's shape: its segments, how many are used, whether it was cut.
/// `Copy` and fixed-size, so looking a template up allocates nothing.
type Shape = ([Seg; MAX_TEMPLATE_SEGMENTS], usize, bool);
/// Interned templates by shape. Looked up on every request with a key of a few
/// machine words: FxHash, not SipHash (no untrusted keys reach the table: a
/// shape is built from a fixed vocabulary).
type Templates = HashMap<Shape, &'static str, rustc_hash::FxBuildHasher>;

fn intern(key: Shape) -> &'static str {
    static TABLE: OnceLock<RwLock<Templates>> = OnceLock::new();
    let table = TABLE.get_or_init(Default::default);
    let (segs, n, truncated) = key;
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
    let mut s = String::from("/v1");
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
            ("/metrics-not-ours", OTHER),
            ("/v1x/agents", OTHER),
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
        let p = format!("/v1/blocks/{B}");
        assert_eq!(classify(&p).block_id, Some(B));
        let p = format!("/v1/agents/{A}/messages/stream");
        let r = classify(&p);
        assert!(r.streaming && !r.is_read(&Method::POST));
        assert!(classify("/v1/runs/run-0a1b2c3d-aaaa/stream").is_read(&Method::POST));
        assert!(classify(&format!("/v1/agents/{A}/archival-memory/search")).is_read(&Method::POST));
        assert!(!classify(&format!("/v1/agents/{A}/messages")).is_read(&Method::POST));
        assert!(classify(&format!("/v1/agents/{A}/messages")).is_read(&Method::GET));
        // Not an agent id: no affinity key.
        assert_eq!(classify("/v1/agents/search").agent_id, None);
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
