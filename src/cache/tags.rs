//! Tags: which cached answers a write makes stale.
//!
//! An entry is tagged with every Letta id in its path and body, its collection
//! when it is a list, and two groups for what ids alone cannot express:
//!
//! - [`BLOCKS`]: the entry shows some block's content (it names a block, lives
//!   under `/v1/blocks`, or belongs to an agent whose blocks are known).
//! - [`UNRELATED`]: the entry belongs to an agent whose blocks were unknown when
//!   it was stored, and could render them without naming them (`…/context`).
//!
//! A write invalidates the ids it names (path and small JSON body), its
//! collection's lists, and for a write to agent Y also Y's blocks (a turn may
//! edit core memory; other agents share blocks). Y's blocks come from
//! [`super::relations`]; when they are unknown the write falls back to
//! [`BLOCKS`], which is coarse but never stale. Every write that can change a
//! block's content also invalidates [`UNRELATED`].
//!
//! Everything here is pure and allocation-light; the table tests are the spec.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

/// A tag: a Letta id (`agent-…`), a collection (`c:agents`), a group (`g:…`) or
/// an agent's message-cache tag (`m:agent-…`).
pub type Tag = Arc<str>;

/// Entries that show some block's content.
pub const BLOCKS: &str = "g:blocks";
/// Agent entries stored while the agent's blocks were unknown.
pub const UNRELATED: &str = "g:unrelated";
/// [`BLOCKS`] and [`UNRELATED`] as shared tags: pushed on most writes, never copied.
static BLOCKS_TAG: LazyLock<Tag> = LazyLock::new(|| Arc::from(BLOCKS));
static UNRELATED_TAG: LazyLock<Tag> = LazyLock::new(|| Arc::from(UNRELATED));
/// Most tags one entry may carry; a body naming more ids is not stored (its
/// invalidation would have to track them all).
pub const MAX_TAGS: usize = 4096;

/// Id prefixes that become tags. Messages, runs, steps, jobs and passages are
/// left out: they are only written under their agent's path (which is a tag),
/// and an agent's state names hundreds of them.
const TAG_PREFIXES: &[&str] = &[
    "agent",
    "block",
    "source",
    "folder",
    "file",
    "tool",
    "identity",
    "group",
    "archive",
    "provider",
    "sandbox",
    "mcp_server",
    "conv",
    "user",
    "org",
    "model",
];

/// Every distinct taggable Letta id (`<prefix>-<uuid>`) in `bytes`, in order.
/// (A set beside the list: an agent's state can name thousands of ids.)
pub fn scan_ids(bytes: &[u8]) -> Vec<&str> {
    let mut seen: HashSet<&str> = HashSet::new();
    ids(bytes).filter(|id| seen.insert(id)).collect()
}

/// Every taggable Letta id in `bytes`, in order, repeats included
/// ([`TagList::push_ids`] drops them there). The scan jumps from `-`
/// to `-` with `memchr`: a write's 1 KB message body names no id, and testing
/// it byte by byte was a sixth of what the cache layer added to a POST.
fn ids(bytes: &[u8]) -> impl Iterator<Item = &str> {
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(at) = memchr::memchr(b'-', &bytes[from..]) {
            let dash = from + at;
            match id_at(bytes, dash) {
                Some((start, end)) => {
                    from = end;
                    // Ids are ASCII by construction.
                    return Some(std::str::from_utf8(&bytes[start..end]).expect("ascii id"));
                }
                None => from = dash + 1,
            }
        }
        from = bytes.len();
        None
    })
}

/// The id whose prefix ends at the `-` at `dash`, as a byte range.
fn id_at(b: &[u8], dash: usize) -> Option<(usize, usize)> {
    let end = dash + 37;
    if end > b.len() || !is_uuid(&b[dash + 1..end]) {
        return None;
    }
    if b.get(end).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let mut start = dash;
    while start > 0 && (b[start - 1].is_ascii_lowercase() || b[start - 1] == b'_') {
        start -= 1;
    }
    if start > 0 && b[start - 1].is_ascii_alphanumeric() {
        return None;
    }
    let prefix = &b[start..dash];
    TAG_PREFIXES
        .iter()
        .any(|p| p.as_bytes() == prefix)
        .then_some((start, end))
}

fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `c:<collection>` for a path under `/v1/<collection>` (or Letta's `/latest`
/// copy of it); folders are sources under another name (same ids), so they
/// share one tag.
pub fn collection(path: &str) -> Option<Tag> {
    let rest = path
        .strip_prefix("/v1/")
        .or_else(|| path.strip_prefix("/latest/"))?;
    let first = rest.split('/').next().filter(|s| !s.is_empty())?;
    let first = if first == "folders" { "sources" } else { first };
    Some(Arc::from(format!("c:{first}")))
}

/// `p:<collection>`: carried by every entry under `/v1/<collection>`, so an
/// admin can purge a whole collection (`POST /-/cache/purge {"prefix":"/v1/tools"}`).
pub fn path_tag(path: &str) -> Option<Tag> {
    collection(path).map(|c| Arc::from(format!("p:{}", &c[2..])))
}

/// The message-cache tag of an agent: dropped by writes that change how the
/// agent answers (configuration, memory), not by its own turns.
pub fn message_tag(agent: &str) -> Tag {
    Arc::from(format!("m:{agent}"))
}

/// Tags in insertion order without repeats. A write or an entry carries a
/// handful, found by comparing along the list; past [`LINEAR`] a set takes over
/// (an agent's state can name thousands of ids, and scanning the list would be
/// quadratic). The set hashes with std's keyed SipHash: the ids come from
/// bodies clients write, and an unkeyed hash (FxHash) lets a body of ids chosen
/// to collide make each insert walk all the others.
#[derive(Default)]
pub struct TagList {
    list: Vec<Tag>,
    seen: Option<HashSet<Tag>>,
}

/// Most tags a [`TagList`] checks by comparing along the list.
const LINEAR: usize = 16;

impl TagList {
    pub fn push(&mut self, t: &str) {
        if !self.contains(t) {
            self.insert(Arc::from(t));
        }
    }

    /// Pushes every taggable id in `bytes`; whether `bytes` named any.
    pub fn push_ids(&mut self, bytes: &[u8]) -> bool {
        let mut named = false;
        for id in ids(bytes) {
            self.push(id);
            named = true;
        }
        named
    }

    /// [`TagList::push`] for a tag already shared (no copy of its text).
    pub fn push_tag(&mut self, t: &Tag) {
        if !self.contains(t) {
            self.insert(t.clone());
        }
    }

    fn insert(&mut self, tag: Tag) {
        match &mut self.seen {
            Some(seen) => {
                seen.insert(tag.clone());
            }
            None if self.list.len() == LINEAR => {
                let seen = self.list.iter().cloned().chain([tag.clone()]).collect();
                self.seen = Some(seen);
            }
            None => {}
        }
        self.list.push(tag);
    }

    pub fn contains(&self, t: &str) -> bool {
        match &self.seen {
            Some(seen) => seen.contains(t),
            None => self.list.iter().any(|x| &**x == t),
        }
    }

    pub fn any(&self, f: impl Fn(&str) -> bool) -> bool {
        self.list.iter().any(|t| f(t))
    }

    pub fn into_vec(self) -> Vec<Tag> {
        self.list
    }
}

impl FromIterator<Tag> for TagList {
    fn from_iter<I: IntoIterator<Item = Tag>>(iter: I) -> TagList {
        let mut t = TagList::default();
        for tag in iter {
            t.push_tag(&tag);
        }
        t
    }
}

/// What a stored entry is tagged with.
///
/// `agent` is the agent the path is under; `agent_blocks` its blocks when known
/// (including just taught by this very entry).
pub fn entry_tags(
    path: &str,
    agent: Option<&str>,
    agent_item: bool,
    body: &[u8],
    agent_blocks: Option<&[Tag]>,
) -> Vec<Tag> {
    let mut tags = TagList::default();
    let path_ids = tags.push_ids(path.as_bytes());
    tags.push_ids(body);
    if !path_ids {
        // A list or a lookup: any write in the collection may change it.
        if let Some(c) = collection(path) {
            tags.push_tag(&c);
        }
    }
    let mut shows_blocks =
        collection(path).as_deref() == Some("c:blocks") || tags.any(|t| t.starts_with("block-"));
    if agent.is_some() {
        match agent_blocks {
            Some(blocks) => {
                for b in blocks {
                    tags.push_tag(b);
                }
                shows_blocks |= !blocks.is_empty();
            }
            // The agent item never renders block content without naming the
            // blocks; other agent views (context, …) may.
            None if !agent_item => tags.push_tag(&UNRELATED_TAG),
            None => {}
        }
    }
    if shows_blocks {
        tags.push_tag(&BLOCKS_TAG);
    }
    tags.into_vec()
}

/// What a successful write invalidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// Ids in the path and body, the collection, groups.
    pub tags: Vec<Tag>,
    /// The agent the write is under: its blocks are invalidated too.
    pub agent: Option<Tag>,
    /// Whether the write may change which blocks the agent has (so what is
    /// known about them must be forgotten): anything under the agent but a turn.
    pub forget_agent: bool,
    /// An agent turn (`…/messages`, `…/messages/stream`, `…/messages/async`):
    /// its effects land while the response streams, so it invalidates again at the end.
    pub turn: bool,
}

/// The invalidation plan of a write to `path` whose JSON body (when small
/// enough to read) is `body`.
pub fn write_plan(path: &str, agent: Option<&str>, body: Option<&[u8]>) -> WritePlan {
    let mut tags = TagList::default();
    tags.push_ids(path.as_bytes());
    if let Some(b) = body {
        tags.push_ids(b);
    }
    if let Some(c) = collection(path) {
        tags.push_tag(&c);
    }
    // The segment after the agent's is `messages` (compared segment by
    // segment: a substring search set up per write cost more than the rest).
    let turn = agent.is_some_and(|a| {
        let mut after = path.split('/').skip_while(|s| *s != a).skip(1);
        after.next() == Some("messages")
    });
    let names_block = tags.any(|t| t.starts_with("block-"));
    if agent.is_some() || names_block {
        tags.push_tag(&UNRELATED_TAG);
    }
    if let (Some(a), false) = (agent, turn) {
        tags.push_tag(&message_tag(a));
    }
    WritePlan {
        tags: tags.into_vec(),
        agent: agent.map(Arc::from),
        forget_agent: agent.is_some() && !turn,
        turn,
    }
}

/// The tags a plan invalidates once the agent's blocks are expanded: the known
/// blocks, or [`BLOCKS`] when they are unknown.
pub fn expand(plan: &WritePlan, agent_blocks: Option<&[Tag]>) -> Vec<Tag> {
    let mut tags: TagList = plan.tags.iter().cloned().collect();
    if plan.agent.is_some() {
        match agent_blocks {
            Some(blocks) => {
                for b in blocks {
                    tags.push_tag(b);
                }
            }
            None => tags.push_tag(&BLOCKS_TAG),
        }
    }
    tags.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "agent-6f1e3c2a-1b2c-4d5e-8f90-0123456789ab";
    const B: &str = "block-0a1b2c3d-1b2c-4d5e-8f90-0123456789ab";
    const T: &str = "tool-0a1b2c3d-1b2c-4d5e-8f90-0123456789ff";
    const M: &str = "message-0a1b2c3d-1b2c-4d5e-8f90-0123456789ff";

    fn strs(tags: &[Tag]) -> Vec<&str> {
        tags.iter().map(|t| &**t).collect()
    }

    #[test]
    fn ids_are_found_with_exact_boundaries() {
        let body = format!(
            r#"{{"id":"{A}","blocks":[{{"id":"{B}"}},{{"id":"{B}"}}],"tool_ids":["{T}"],"message_ids":["{M}"],"x":"xagent-{}"}}"#,
            &A[6..]
        );
        assert_eq!(scan_ids(body.as_bytes()), vec![A, B, T]);
        assert!(scan_ids(b"agent-1234").is_empty(), "not a uuid");
        assert!(
            scan_ids(format!("{A}0").as_bytes()).is_empty(),
            "uuid runs on"
        );
        assert_eq!(
            scan_ids(format!("/v1/agents/{A}/tools/attach/{T}").as_bytes()),
            vec![A, T]
        );
    }

    #[test]
    fn ids_are_found_between_stray_dashes() {
        let body = format!("a-b--{A}-{B}x-{T}");
        assert_eq!(scan_ids(body.as_bytes()), vec![A, T], "B runs on into `x`");
        assert_eq!(scan_ids(format!("--{A}-").as_bytes()), vec![A]);
        assert!(scan_ids(b"-").is_empty() && scan_ids(b"").is_empty());
    }

    #[test]
    fn tag_list_keeps_first_order_without_repeats_past_the_linear_size() {
        let names: Vec<String> = (0..3 * LINEAR).map(|i| format!("tag-{i}")).collect();
        let mut list = TagList::default();
        for round in 0..2 {
            for (i, n) in names.iter().enumerate() {
                if round == 0 || i % 2 == 0 {
                    list.push(n);
                }
            }
        }
        assert!(list.seen.is_some(), "the set took over");
        assert!(list.contains("tag-0") && list.contains(&names[3 * LINEAR - 1]));
        assert!(!list.contains("tag-x"));
        assert_eq!(
            strs(&list.into_vec()),
            names.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }

    #[test]
    fn entry_tags_table() {
        let b_arc: Vec<Tag> = vec![Arc::from(B)];
        // (path, agent, agent item?, body, known blocks, expected tags)
        let agent_path = format!("/v1/agents/{A}");
        let ctx_path = format!("/v1/agents/{A}/context");
        let block_path = format!("/v1/blocks/{B}");
        let with_block = format!(r#"{{"id":"{A}","memory":{{"blocks":[{{"id":"{B}"}}]}}}}"#);
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            bool,
            String,
            Option<&'a [Tag]>,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "/v1/agents/",
                None,
                false,
                format!(r#"[{{"id":"{A}"}}]"#),
                None,
                vec![A, "c:agents"],
            ),
            (
                "/v1/tools/",
                None,
                false,
                format!(r#"[{{"id":"{T}"}}]"#),
                None,
                vec![T, "c:tools"],
            ),
            (
                "/v1/folders/",
                None,
                false,
                "[]".into(),
                None,
                vec!["c:sources"],
            ),
            (
                &agent_path,
                Some(A),
                true,
                format!(r#"{{"id":"{A}"}}"#),
                None,
                vec![A],
            ),
            (
                &agent_path,
                Some(A),
                true,
                with_block.clone(),
                None,
                vec![A, B, BLOCKS],
            ),
            (
                &ctx_path,
                Some(A),
                false,
                "{}".into(),
                None,
                vec![A, UNRELATED],
            ),
            (
                &ctx_path,
                Some(A),
                false,
                "{}".into(),
                Some(&b_arc),
                vec![A, B, BLOCKS],
            ),
            (
                &block_path,
                None,
                false,
                format!(r#"{{"id":"{B}"}}"#),
                None,
                vec![B, BLOCKS],
            ),
            (
                "/v1/blocks/",
                None,
                false,
                "[]".into(),
                None,
                vec!["c:blocks", BLOCKS],
            ),
        ];
        for (path, agent, item, body, known, want) in cases {
            let got = entry_tags(path, agent, item, body.as_bytes(), known);
            assert_eq!(strs(&got), want, "{path} {body}");
        }
    }

    #[test]
    fn write_plan_table() {
        let c = |p: &str, body: Option<&str>| {
            let agent = crate::routes::classify(p).agent_id;
            write_plan(p, agent, body.map(str::as_bytes))
        };
        let m = message_tag(A);
        let p = c(&format!("/v1/agents/{A}/messages"), None);
        assert_eq!(strs(&p.tags), vec![A, "c:agents", UNRELATED]);
        assert!(p.turn && !p.forget_agent && p.agent.as_deref() == Some(A));
        let p = c(&format!("/v1/agents/{A}/messages/stream"), None);
        assert!(p.turn);
        for not_turn in ["messagesx", "tools/messages", ""] {
            assert!(
                !c(&format!("/v1/agents/{A}/{not_turn}"), None).turn,
                "{not_turn}"
            );
        }
        let p = c(
            &format!("/v1/agents/{A}"),
            Some(&format!(r#"{{"tool_ids":["{T}"]}}"#)),
        );
        assert_eq!(strs(&p.tags), vec![A, T, "c:agents", UNRELATED, &m]);
        assert!(!p.turn && p.forget_agent);
        let p = c(
            &format!("/v1/agents/{A}/core-memory/blocks/attach/{B}"),
            None,
        );
        assert_eq!(strs(&p.tags), vec![A, B, "c:agents", UNRELATED, &m]);
        let p = c(&format!("/v1/blocks/{B}"), Some(r#"{"value":"x"}"#));
        assert_eq!(strs(&p.tags), vec![B, "c:blocks", UNRELATED]);
        assert!(p.agent.is_none() && !p.forget_agent);
        let p = c("/v1/tools/", Some(r#"{"source_code":"def f(): pass"}"#));
        assert_eq!(strs(&p.tags), vec!["c:tools"]);
        let p = c(
            &format!("/v1/folders/{}/upload", &B.replace("block", "source")),
            None,
        );
        assert!(strs(&p.tags).contains(&"c:sources"));
    }

    #[test]
    fn expansion_uses_known_blocks_or_falls_back_to_every_block_view() {
        let plan = write_plan(&format!("/v1/agents/{A}/messages"), Some(A), None);
        let known: Vec<Tag> = vec![Arc::from(B)];
        assert!(strs(&expand(&plan, Some(&known))).contains(&B));
        assert!(!strs(&expand(&plan, Some(&known))).contains(&BLOCKS));
        assert!(strs(&expand(&plan, None)).contains(&BLOCKS));
        let plan = write_plan(&format!("/v1/blocks/{B}"), None, None);
        assert_eq!(
            expand(&plan, None),
            plan.tags,
            "no agent: nothing to expand"
        );
    }
}
