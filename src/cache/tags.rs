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

use std::sync::Arc;

use rustc_hash::FxHashSet;

/// A tag: a Letta id (`agent-…`), a collection (`c:agents`), a group (`g:…`) or
/// an agent's message-cache tag (`m:agent-…`).
pub type Tag = Arc<str>;

/// Entries that show some block's content.
pub const BLOCKS: &str = "g:blocks";
/// Agent entries stored while the agent's blocks were unknown.
pub const UNRELATED: &str = "g:unrelated";
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
    let mut out: Vec<&str> = Vec::new();
    let mut seen: FxHashSet<&str> = FxHashSet::default();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'-' {
            i += 1;
            continue;
        }
        if let Some((start, end)) = id_at(bytes, i) {
            // Ids are ASCII by construction.
            let id = std::str::from_utf8(&bytes[start..end]).expect("ascii id");
            if seen.insert(id) {
                out.push(id);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
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

/// Tags in insertion order without repeats, checked against a set (not by
/// scanning the list, which is quadratic on bodies naming many ids).
#[derive(Default)]
pub struct TagList {
    list: Vec<Tag>,
    seen: FxHashSet<Tag>,
}

impl TagList {
    pub fn push(&mut self, t: &str) {
        if !self.seen.contains(t) {
            let tag: Tag = Arc::from(t);
            self.seen.insert(tag.clone());
            self.list.push(tag);
        }
    }

    pub fn contains(&self, t: &str) -> bool {
        self.seen.contains(t)
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
            if t.seen.insert(tag.clone()) {
                t.list.push(tag);
            }
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
    let path_ids = scan_ids(path.as_bytes());
    for id in &path_ids {
        tags.push(id);
    }
    for id in scan_ids(body) {
        tags.push(id);
    }
    if path_ids.is_empty() {
        // A list or a lookup: any write in the collection may change it.
        if let Some(c) = collection(path) {
            tags.push(&c);
        }
    }
    let mut shows_blocks =
        collection(path).as_deref() == Some("c:blocks") || tags.any(|t| t.starts_with("block-"));
    if agent.is_some() {
        match agent_blocks {
            Some(blocks) => {
                for b in blocks {
                    tags.push(b);
                }
                shows_blocks |= !blocks.is_empty();
            }
            // The agent item never renders block content without naming the
            // blocks; other agent views (context, …) may.
            None if !agent_item => tags.push(UNRELATED),
            None => {}
        }
    }
    if shows_blocks {
        tags.push(BLOCKS);
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
    for id in scan_ids(path.as_bytes()) {
        tags.push(id);
    }
    for id in body.map(scan_ids).unwrap_or_default() {
        tags.push(id);
    }
    if let Some(c) = collection(path) {
        tags.push(&c);
    }
    let turn = agent.is_some_and(|a| {
        let after = path.split_once(a).map_or("", |(_, rest)| rest);
        after == "/messages" || after.starts_with("/messages/")
    });
    let names_block = tags.any(|t| t.starts_with("block-"));
    if agent.is_some() || names_block {
        tags.push(UNRELATED);
    }
    if let (Some(a), false) = (agent, turn) {
        tags.push(&message_tag(a));
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
                    tags.push(b);
                }
            }
            None => tags.push(BLOCKS),
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
