//! The write path: forward, then invalidate what the write touched.
//!
//! A write under `/v1` (POST/PATCH/PUT/DELETE, and the opt-in cached turn)
//! reads its body when it is small (to find the ids it names and to hash it),
//! holds its tags while it runs (nothing read meanwhile is stored), and on 2xx
//! invalidates before its answer is returned; an agent turn invalidates again
//! when its stream ends. Identical block writes may be answered from memory
//! (suppression), and the answer to creating or changing an agent teaches
//! which blocks it has.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::Service;

use super::entry::{self, Entry, SUPPRESSED, X_CACHE};
use super::key::{self, CacheKey, Domain};
use super::policy::{content_length, Bypass, Policy};
use super::relations;
use super::service::{attach_fill, forward, lookup, Found, Resp, Target};
use super::tags::{self, Tag};
use super::tee::{self, Tee};
use super::{FillStart, Shared};
use crate::error::ProxyError;
use crate::proxy::body::{InboundBody, ResponseBody};

/// Reads a body of known, small length into memory (to scan and hash it).
async fn read_small(
    body: InboundBody,
    headers: &HeaderMap,
    cap: u64,
) -> Result<(InboundBody, Option<Bytes>), Resp> {
    match content_length(headers) {
        Some(0) => Ok((body, Some(Bytes::new()))),
        Some(n) if n <= cap => match http_body_util::Limited::new(body, cap as usize)
            .collect()
            .await
        {
            Ok(c) => {
                let b = c.to_bytes();
                Ok((InboundBody::from(b.clone()), Some(b)))
            }
            Err(_) => Err(ProxyError::BadRequest("the request body could not be read")
                .to_response()
                .map(ResponseBody::full)),
        },
        _ => Ok((body, None)),
    }
}

fn is_block_write(method: &Method, template: &str) -> bool {
    *method == Method::PATCH
        && (template == "/v1/blocks/{block_id}"
            || template == "/v1/agents/{agent_id}/core-memory/blocks/{block_label}"
            || template == "/v1/agents/{agent_id}/core-memory/blocks/{block_id}")
}

/// Writes whose answer is the agent's new state (it may list its blocks).
fn teaches(method: &Method, template: &str) -> bool {
    (*method == Method::POST && template.trim_end_matches('/') == "/v1/agents")
        || (*method == Method::PATCH && template == "/v1/agents/{agent_id}")
}

fn is_event_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Releases a write's hold on its tags when dropped.
struct Hold {
    shared: Arc<Shared>,
    tags: Vec<Tag>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.shared.epochs.release(&self.tags);
    }
}

pub(crate) async fn write<S>(
    shared: Arc<Shared>,
    policy: Arc<Policy>,
    inner: S,
    req: Request<InboundBody>,
    message: Option<(Duration, Bypass)>,
) -> Resp
where
    S: Service<Request<InboundBody>, Response = Resp, Error = Infallible>,
{
    let (parts, body) = req.into_parts();
    let target = Target::of(&parts.uri, message.is_some());
    let (body, bytes) = match read_small(body, &parts.headers, shared.max_scan_body).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let plan = tags::write_plan(&target.path, target.agent.as_deref(), bytes.as_deref());

    // Unchanged-write suppression: keyed by caller and target, valued by body hash.
    let suppress = match &bytes {
        Some(b) if policy.suppress && is_block_write(&parts.method, target.template) => {
            key::compute(
                Domain::Suppression,
                &parts.method,
                &target.path,
                parts.uri.query(),
                &parts.headers,
                &policy.headers,
                None,
            )
            // A request the key cannot describe is never answered from memory.
            .ok()
            .map(|k| (k, key::body_hash(b)))
        }
        _ => None,
    };
    if let Some((k, h)) = &suppress {
        if let Some(rec) = shared.remembered(k).await {
            if rec.request_hash.as_ref() == Some(h) {
                shared.metrics.suppressed.inc();
                let mut r = rec.to_response(None);
                r.headers_mut().remove(header::AGE);
                r.headers_mut()
                    .insert(SUPPRESSED.clone(), HeaderValue::from_static("1"));
                return r;
            }
        }
    }

    // The opt-in message cache: the turn is looked up by its body.
    let mut fill = None;
    if let (Some((ttl, bypass)), Some(b)) = (message, &bytes) {
        let key = key::compute(
            Domain::Response,
            &parts.method,
            &target.path,
            parts.uri.query(),
            &parts.headers,
            &policy.headers,
            Some(&key::body_hash(b)),
        );
        match key {
            Ok(key) => match lookup(&shared, key, bypass).await {
                Found::Answer(r) => return r,
                Found::Fetch(leader, start, x) => fill = Some((key, leader, start, x, ttl)),
            },
            Err(unkeyed) => {
                shared.metrics.unkeyed.inc();
                tracing::debug!(header = %unkeyed.0, "cache: a header no key rule names; turn not cached");
            }
        }
    }

    // Nothing read while the write runs is stored under what it touches.
    let known = target
        .agent
        .as_deref()
        .and_then(|a| shared.relations.get(a));
    let hold = Hold {
        shared: shared.clone(),
        tags: tags::expand(&plan, known.as_deref()),
    };
    shared.epochs.hold(&hold.tags);
    let method = parts.method.clone();
    let mut resp = forward(inner, parts, body).await;
    if let Some((_, _, _, x, _)) = &fill {
        resp.headers_mut().insert(X_CACHE.clone(), (*x).clone());
    }
    if !resp.status().is_success() {
        return resp;
    }
    shared.invalidate(&plan).await;
    let after = shared.fill_start(None);
    let streaming = plan.turn || is_event_stream(resp.headers());
    let remember = suppress.filter(|_| resp.status() == StatusCode::OK);
    let teach = teaches(&method, target.template);
    let (status, headers) = (resp.status(), entry::kept_headers(resp.headers()));
    let target = Arc::new(target);
    if let Some((key, leader, start, _, ttl)) = fill {
        let t = (*target).clone();
        resp = attach_fill(&shared, &policy, resp, key, start, leader, ttl, t);
    }
    if !(streaming || remember.is_some() || teach) {
        return resp;
    }
    let cap = if remember.is_some() || teach {
        policy.max_entry_size as usize
    } else {
        0
    };
    let (rparts, body) = resp.into_parts();
    let body = Tee::wrap(body, cap, move |outcome| {
        // A plain write is done when its body is: release now, so the answer
        // remembered below is usable by the very next request.
        let hold = if streaming {
            Some(hold)
        } else {
            drop(hold);
            None
        };
        let remembered = match (&outcome, remember) {
            (Ok(bytes), Some((k, h))) => Some((
                k,
                shared.remember(k, h, &target, status, headers, bytes.clone(), after),
            )),
            _ => None,
        };
        tee::spawn(async move {
            if streaming {
                // The turn's effects landed while it streamed.
                shared.invalidate(&plan).await;
            }
            drop(hold);
            if let Some((k, rec)) = remembered {
                shared.store(k, rec, after, None, false).await;
                shared
                    .remembering
                    .lock()
                    .expect("remembering poisoned")
                    .remove(&k);
            }
            let Ok(bytes) = outcome else { return };
            if teach {
                if let Some((agent, blocks)) =
                    relations::taught(target.template, target.agent.as_deref(), false, &bytes)
                {
                    let agent_tag: Tag = Arc::from(agent.as_str());
                    if shared.epochs.still_valid(after.local, &[agent_tag]) {
                        shared.relations.learn(&agent, blocks);
                    }
                }
            }
        });
    });
    Response::from_parts(rparts, body)
}

impl Shared {
    /// The remembered write under `key`: in L1, or just completed and on its
    /// way there (checked against what was invalidated since).
    async fn remembered(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        if let Some(e) = self.l1.get(key).await {
            return Some(e);
        }
        let pending = self.remembering.lock().expect("remembering poisoned");
        let (rec, start) = pending.get(key)?;
        self.epochs
            .still_valid(*start, &rec.tags)
            .then(|| rec.clone())
    }

    /// Remembers a successful block write for suppression (this instance
    /// only): visible at once, stored in L1 by the caller.
    #[allow(clippy::too_many_arguments)]
    fn remember(
        &self,
        key: CacheKey,
        hash: [u8; 32],
        target: &Target,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        start: FillStart,
    ) -> Arc<Entry> {
        let mut tags: Vec<Tag> = Vec::new();
        for id in tags::scan_ids(target.path.as_bytes())
            .into_iter()
            .chain(tags::scan_ids(&body))
        {
            if !tags.iter().any(|t| &**t == id) {
                tags.push(Arc::from(id));
            }
        }
        if tags.iter().any(|t| t.starts_with("block-")) {
            tags.push(Arc::from(tags::BLOCKS));
        }
        let mut e = Entry::new(status, headers, body, self.suppress_ttl, tags);
        e.request_hash = Some(hash);
        let e = Arc::new(e);
        self.remembering
            .lock()
            .expect("remembering poisoned")
            .insert(key, (e.clone(), start.local));
        e
    }
}
