//! The write path: forward, then invalidate what the write touched.
//!
//! A write under the API (POST/PATCH/PUT/DELETE, and the opt-in cached turn)
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
use http_body::Body;
use http_body_util::BodyExt;
use tower::Service;

use super::entry::{self, Entry, SUPPRESSED, X_CACHE};
use super::key::{self, CacheKey, Domain};
use super::policy::{content_length, Bypass, Policy};
use super::relations;
use super::service::{cached, forward, lookup, Fill, Found, Target};
use super::tags::{self, Tag};
use super::tee::{self, Tee};
use super::{FillStart, Shared};
use crate::body::{Full, InboundBody, Watched};
use crate::error::ProxyError;
use crate::routes::{Classified, RouteKind};

type Resp<B> = Response<Watched<B, Tee>>;

/// Reads a body of known, small length into memory (to scan and hash it).
async fn read_small(
    body: InboundBody,
    headers: &HeaderMap,
    cap: u64,
) -> Result<(InboundBody, Option<Bytes>), ProxyError> {
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
            Err(_) => Err(ProxyError::BadRequest("the request body could not be read")),
        },
        _ => Ok((body, None)),
    }
}

/// A write of one block's value (by id, or by label under its agent).
fn is_block_write(method: &Method, kind: RouteKind) -> bool {
    *method == Method::PATCH && matches!(kind, RouteKind::Block | RouteKind::AgentCoreMemoryBlock)
}

/// Writes whose answer is the agent's new state (it may list its blocks).
fn teaches(method: &Method, kind: RouteKind) -> bool {
    (*method == Method::POST && kind == RouteKind::Agents)
        || (*method == Method::PATCH && kind == RouteKind::Agent)
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

pub(crate) async fn write<S, B>(
    shared: Arc<Shared>,
    policy: Arc<Policy>,
    inner: S,
    req: Request<InboundBody>,
    message: Option<(Duration, Bypass)>,
) -> Resp<B>
where
    S: Service<Request<InboundBody>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes> + From<Full>,
{
    let target = Target::of(req.uri(), &Classified::of_request(&req), message.is_some());
    let (parts, body) = req.into_parts();
    let (body, bytes) = match read_small(body, &parts.headers, shared.max_scan_body).await {
        Ok(v) => v,
        Err(e) => return cached(e.to_response().map(Full::new)),
    };
    let plan = tags::write_plan(&target.path, target.agent.as_deref(), bytes.as_deref());

    let suppress = match suppression(&shared, &policy, &parts, &target, bytes.as_ref()).await {
        Ok(s) => s,
        Err(answered) => return cached(answered),
    };
    let fill = match message.zip(bytes.as_ref()) {
        Some((message, b)) => {
            match turn_lookup(&shared, &policy, &parts, &target, message, b).await {
                Ok(f) => f,
                Err(answered) => return cached(answered),
            }
        }
        None => None,
    };
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
    if let Some((_, x)) = &fill {
        resp.headers_mut().insert(X_CACHE.clone(), (*x).clone());
    }
    if !resp.status().is_success() {
        // A refused or failed write changed nothing: nothing to invalidate.
        return resp.map(Watched::plain);
    }
    shared.invalidate(&plan).await;
    let after = shared.fill_start(None);
    let streaming = plan.turn || is_event_stream(resp.headers());
    let status = resp.status();
    // What a remembered answer needs: its key and hash, and the headers it keeps.
    let remember = suppress
        .filter(|_| status == StatusCode::OK)
        .map(|(k, h)| (k, h, entry::kept_headers(resp.headers())));
    let teach = teaches(&method, target.kind);
    let mut tee = fill.and_then(|(f, _)| f.consumer(&shared, &policy, status, resp.headers()));
    if !(streaming || remember.is_some() || teach) {
        return match tee {
            Some(t) => resp.map(|b| Watched::new(b, t)),
            None => resp.map(Watched::plain),
        };
    }
    // The body is needed to remember or learn from it; for a stream only its end.
    let cap = if remember.is_some() || teach {
        policy.max_entry_size as usize
    } else {
        0
    };
    let after_write = move |outcome: Result<Bytes, tee::Cut>| {
        // A plain write is done when its body is: release now, so the answer
        // remembered below is usable by the very next request.
        let hold = if streaming {
            Some(hold)
        } else {
            drop(hold);
            None
        };
        let remembered = match (&outcome, remember) {
            (Ok(bytes), Some((k, h, headers))) => {
                let e = shared.remembered_entry(&target.path, status, headers, bytes.clone());
                Some((k, shared.remember(k, h, e, after)))
            }
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
                    relations::taught(target.kind, target.agent.as_deref(), false, &bytes)
                {
                    let agent_tag: Tag = Arc::from(agent.as_str());
                    if shared.epochs.still_valid(after.local, &[agent_tag]) {
                        shared.relations.learn(&agent, blocks);
                    }
                }
            }
        });
    };
    match tee.as_mut() {
        Some(t) => t.add(cap, after_write),
        None => tee = Some(Tee::new(cap, after_write)),
    }
    let tee = tee.expect("just set");
    resp.map(|b| Watched::new(b, tee))
}

/// Unchanged-write suppression, keyed by caller and target, valued by the
/// body's hash: `Err` with the remembered answer when this very write was just
/// made, else the key and hash to remember this one under.
async fn suppression(
    shared: &Arc<Shared>,
    policy: &Policy,
    parts: &http::request::Parts,
    target: &Target,
    bytes: Option<&Bytes>,
) -> Result<Option<(CacheKey, [u8; 32])>, Response<Full>> {
    let Some(b) = bytes.filter(|_| policy.suppress && is_block_write(&parts.method, target.kind))
    else {
        return Ok(None);
    };
    let key = key::compute(
        Domain::Suppression,
        &parts.method,
        &target.path,
        parts.uri.query(),
        &parts.headers,
        &policy.headers,
        None,
    );
    // A request the key cannot describe is never answered from memory.
    let Ok(k) = key else {
        return Ok(None);
    };
    let h = key::body_hash(b);
    if let Some(rec) = shared.remembered(&k).await {
        if rec.request_hash.as_ref() == Some(&h) {
            shared.metrics.suppressed.inc();
            let mut r = rec.to_response(None);
            r.headers_mut().remove(header::AGE);
            r.headers_mut()
                .insert(SUPPRESSED.clone(), HeaderValue::from_static("1"));
            return Err(r);
        }
    }
    Ok(Some((k, h)))
}

/// The opt-in message cache: the turn looked up by its body. `Err` with the
/// cached answer, else the fill to make (and its `x-cache`) if the turn is cacheable.
async fn turn_lookup(
    shared: &Arc<Shared>,
    policy: &Policy,
    parts: &http::request::Parts,
    target: &Target,
    (ttl, bypass): (Duration, Bypass),
    body: &Bytes,
) -> Result<Option<(Fill, &'static HeaderValue)>, Response<Full>> {
    let key = key::compute(
        Domain::Response,
        &parts.method,
        &target.path,
        parts.uri.query(),
        &parts.headers,
        &policy.headers,
        Some(&key::body_hash(body)),
    );
    match key {
        Ok(key) => match lookup(shared, key, bypass).await {
            Found::Answer(r) => Err(r),
            Found::Fetch(leader, start, x) => Ok(Some((
                Fill {
                    key,
                    start,
                    leader,
                    ttl,
                    target: target.clone(),
                },
                x,
            ))),
        },
        Err(unkeyed) => {
            shared.metrics.unkeyed.inc();
            tracing::debug!(header = %unkeyed.0, "cache: a header no key rule names; turn not cached");
            Ok(None)
        }
    }
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
    /// only): visible at once, stored in L1 by the caller. `entry` is the
    /// write's answer; `hash` the request body's.
    fn remember(
        &self,
        key: CacheKey,
        hash: [u8; 32],
        mut entry: Entry,
        start: FillStart,
    ) -> Arc<Entry> {
        entry.request_hash = Some(hash);
        let e = Arc::new(entry);
        self.remembering
            .lock()
            .expect("remembering poisoned")
            .insert(key, (e.clone(), start.local));
        e
    }

    /// A remembered write's entry: tagged by the ids of its path and answer.
    fn remembered_entry(
        &self,
        path: &str,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    ) -> Entry {
        let mut tags = tags::TagList::default();
        tags.push_ids(path.as_bytes());
        tags.push_ids(&body);
        if tags.any(|t| t.starts_with("block-")) {
            tags.push(tags::BLOCKS);
        }
        Entry::new(status, headers, body, self.suppress_ttl, tags.into_vec())
    }
}
