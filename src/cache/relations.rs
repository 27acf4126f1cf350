//! Which blocks each agent has, as far as this instance has seen.
//!
//! Learned only from answers that list *all* of an agent's blocks: its core
//! memory, its block list (one unpaged answer), its state when the state
//! includes the memory (the 1.x SDK leaves it out unless asked), and the answer
//! to creating the agent. Forgotten by any write that may change the set
//! (anything under the agent but a turn). Forgetting is always safe: a write to
//! an agent whose blocks are unknown invalidates every block view instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::tags::{Tag, TagList};
use crate::routes::RouteKind;

/// Most agents remembered; past it the map starts over (see the module doc:
/// forgetting costs hit rate, never correctness).
const MAX_AGENTS: usize = 100_000;
/// Letta's default page size of an agent's block list: a full page may be partial.
const BLOCK_PAGE: usize = 100;

/// Agent → its blocks.
#[derive(Default)]
pub struct Relations {
    map: Mutex<HashMap<Tag, Arc<[Tag]>>>,
}

impl Relations {
    pub fn get(&self, agent: &str) -> Option<Arc<[Tag]>> {
        self.map
            .lock()
            .expect("relations poisoned")
            .get(agent)
            .cloned()
    }

    pub fn learn(&self, agent: &str, blocks: Arc<[Tag]>) {
        let mut map = self.map.lock().expect("relations poisoned");
        if map.len() >= MAX_AGENTS && !map.contains_key(agent) {
            map.clear();
        }
        map.insert(Arc::from(agent), blocks);
    }

    pub fn forget(&self, agent: &str) {
        self.map.lock().expect("relations poisoned").remove(agent);
    }

    pub fn forget_all(&self) {
        self.map.lock().expect("relations poisoned").clear();
    }
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Deserialize)]
struct MemoryShape {
    #[serde(default)]
    blocks: Option<Vec<IdOnly>>,
}

#[derive(Deserialize)]
struct AgentShape {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    memory: Option<MemoryShape>,
    #[serde(default)]
    blocks: Option<Vec<IdOnly>>,
}

fn block_tags(ids: impl IntoIterator<Item = String>) -> Arc<[Tag]> {
    let mut v = TagList::default();
    for id in ids {
        if id.starts_with("block-") {
            v.push(&id);
        }
    }
    v.into_vec().into()
}

/// An agent and all its blocks.
pub type Taught = (String, Arc<[Tag]>);

/// What an answer teaches: `(agent, all its blocks)`, when it lists them all.
///
/// `kind` is the route's, `agent` the agent in the path (if any), `has_query`
/// whether the request had a query string.
pub fn taught(
    kind: RouteKind,
    agent: Option<&str>,
    has_query: bool,
    body: &[u8],
) -> Option<Taught> {
    match (kind, agent) {
        (RouteKind::AgentCoreMemory, Some(a)) => {
            let m: MemoryShape = serde_json::from_slice(body).ok()?;
            Some((
                a.to_string(),
                block_tags(m.blocks?.into_iter().map(|b| b.id)),
            ))
        }
        (RouteKind::AgentCoreMemoryBlocks, Some(a)) if !has_query => {
            let list: Vec<IdOnly> = serde_json::from_slice(body).ok()?;
            (list.len() < BLOCK_PAGE)
                .then(|| (a.to_string(), block_tags(list.into_iter().map(|b| b.id))))
        }
        // The agent's state (a read, or the answer to creating or changing it):
        // only when it carries its memory, i.e. non-empty block lists.
        (RouteKind::Agent, _) | (RouteKind::Agents, None) => {
            let s: AgentShape = serde_json::from_slice(body).ok()?;
            let id = s.id.filter(|id| id.starts_with("agent-"))?;
            if agent.is_some_and(|a| a != id) {
                return None;
            }
            let mut ids: Vec<String> = s
                .blocks
                .unwrap_or_default()
                .into_iter()
                .map(|b| b.id)
                .collect();
            if let Some(m) = s.memory.and_then(|m| m.blocks) {
                ids.extend(m.into_iter().map(|b| b.id));
            }
            (!ids.is_empty()).then(|| (id, block_tags(ids)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "agent-6f1e3c2a-1b2c-4d5e-8f90-0123456789ab";
    const B: &str = "block-0a1b2c3d-1b2c-4d5e-8f90-0123456789ab";

    #[test]
    fn only_complete_block_lists_teach() {
        let mem = format!(r#"{{"blocks":[{{"id":"{B}","value":"x"}}],"prompt_template":""}}"#);
        let state = format!(r#"{{"id":"{A}","memory":{{"blocks":[{{"id":"{B}"}}]}},"blocks":[]}}"#);
        let bare_state = format!(r#"{{"id":"{A}","memory":{{"blocks":[]}},"blocks":[]}}"#);
        let list = format!(r#"[{{"id":"{B}"}}]"#);
        let t = RouteKind::Agent;
        // (route kind, agent in path, has query, body, blocks taught)
        type Case<'a> = (
            RouteKind,
            Option<&'a str>,
            bool,
            &'a str,
            Option<Vec<&'a str>>,
        );
        let cases: Vec<Case> = vec![
            (
                RouteKind::AgentCoreMemory,
                Some(A),
                false,
                &mem,
                Some(vec![B]),
            ),
            (
                RouteKind::AgentCoreMemoryBlocks,
                Some(A),
                false,
                &list,
                Some(vec![B]),
            ),
            (RouteKind::AgentCoreMemoryBlocks, Some(A), true, &list, None),
            (t, Some(A), false, &state, Some(vec![B])),
            (t, Some(A), false, &bare_state, None),
            (RouteKind::Agents, None, false, &state, Some(vec![B])),
            (RouteKind::AgentCoreMemoryBlock, Some(A), false, &list, None),
            (t, Some(A), false, "not json", None),
        ];
        for (kind, agent, q, body, want) in cases {
            let got = taught(kind, agent, q, body.as_bytes());
            let got = got.map(|(a, b)| {
                assert_eq!(a, A);
                b.iter().map(|t| t.to_string()).collect::<Vec<_>>()
            });
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{kind:?} {body}");
        }
        // An empty core memory is complete knowledge: the agent has no blocks.
        let empty = taught(
            RouteKind::AgentCoreMemory,
            Some(A),
            false,
            br#"{"blocks":[]}"#,
        );
        assert_eq!(empty.unwrap().1.len(), 0);
    }

    #[test]
    fn learn_get_forget() {
        let r = Relations::default();
        assert!(r.get(A).is_none());
        r.learn(A, vec![Arc::from(B)].into());
        assert_eq!(r.get(A).unwrap().len(), 1);
        r.forget(A);
        assert!(r.get(A).is_none());
    }
}
