//! The cache as a tower layer around the proxy service.
//!
//! Per request, [`Policy::plan`] decides from the method, path and a few
//! headers. `Pass` goes straight to the inner service (no key, no box, the
//! inner future untouched). A read looks in L1, joins a fill in progress, looks
//! in Redis, and on a miss forwards and tees the body into both tiers. A write
//! forwards, and on 2xx invalidates what it touched before its response is
//! returned; agent turns invalidate again when their stream ends. Block writes
//! identical to the last one may be answered from memory (suppression), and an
//! agent turn may be answered from the opt-in message cache.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

use super::coalesce::{self, Leader, Role};
use super::entry::{self, Entry, BYPASS, HIT, MISS, SUPPRESSED, X_CACHE};
use super::key::{self, CacheKey, Domain};
use super::l2::Lookup;
use super::policy::{content_length, Bypass, Plan, Policy};
use super::relations;
use super::tags::{self, Tag};
use super::tee::{self, Tee};
use super::{FillStart, Shared};
use crate::error::ProxyError;
use crate::proxy::body::{InboundBody, ResponseBody};
use crate::routes;

type Resp = Response<ResponseBody>;
type Boxed = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

/// Puts the cache in front of a service. Holds only the shared cache.
#[derive(Clone)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

impl CacheLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> CacheLayer {
        CacheLayer { shared }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> CacheService<S> {
        CacheService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The cache service. Cloning shares the cache (and clones the inner service).
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<InboundBody>> for CacheService<S>
where
    S: Service<Request<InboundBody>, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = Either<S::Future, Boxed>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<InboundBody>) -> Self::Future {
        let policy = self.shared.policy();
        let plan = if policy.enabled {
            let path = req.uri().path();
            let read_only_post =
                *req.method() == Method::POST && routes::classify(path).read_only_post;
            policy.plan(req.method(), path, read_only_post, req.headers())
        } else {
            Plan::Pass
        };
        if plan == Plan::Pass {
            return Either::Left(self.inner.call(req));
        }
        // The readied service takes this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Either::Right(Box::pin(async move {
            Ok(match plan {
                Plan::Read { ttl, bypass } => read(shared, policy, inner, req, ttl, bypass).await,
                Plan::Message { ttl, bypass } => {
                    write(shared, policy, inner, req, Some((ttl, bypass))).await
                }
                Plan::Write | Plan::Pass => write(shared, policy, inner, req, None).await,
            })
        }))
    }
}

/// What an answer is about, kept past the request's consumption.
#[derive(Clone)]
pub(crate) struct Target {
    pub path: String,
    pub has_query: bool,
    pub template: &'static str,
    pub agent: Option<String>,
    /// An opt-in cached agent turn.
    pub message: bool,
}

impl Target {
    fn of(uri: &Uri, message: bool) -> Target {
        let route = routes::classify(uri.path());
        Target {
            path: uri.path().to_string(),
            has_query: uri.query().is_some_and(|q| !q.is_empty()),
            template: route.template,
            agent: route.agent_id.map(str::to_string),
            message,
        }
    }
}

async fn forward<S>(inner: S, parts: http::request::Parts, body: InboundBody) -> Resp
where
    S: Service<Request<InboundBody>, Response = Resp, Error = Infallible>,
{
    match inner.oneshot(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Where a lookup left a request.
enum Found {
    /// Answered from the cache.
    Answer(Resp),
    /// Fetch it: lead the fill (when coalescing), store from `start`, say `x_cache`.
    Fetch(Option<Leader>, FillStart, &'static HeaderValue),
}

async fn lookup(shared: &Arc<Shared>, key: CacheKey, bypass: Bypass) -> Found {
    let m = &shared.metrics;
    if bypass != Bypass::No {
        m.bypass.inc();
        // The old answer goes whatever the new one turns out to be.
        shared.l1.remove(&key).await;
        let redis = match &shared.l2 {
            Some(l2) => {
                l2.remove(&key).await;
                l2.epoch().await
            }
            None => None,
        };
        let start = shared.fill_start(redis);
        // A refresh leads: reads arriving meanwhile wait for the fresh answer.
        let leader = (bypass == Bypass::Refresh).then(|| shared.coalescer.lead(key, start.local));
        return Found::Fetch(leader, start, &BYPASS);
    }
    if let Some(e) = shared.l1.get(&key).await {
        m.hit_l1.inc();
        return Found::Answer(e.to_response(Some(&HIT)));
    }
    m.miss_l1.inc();
    let local = shared.epochs.current();
    let valid = |begun: u64, e: &Entry| shared.epochs.still_valid(begun, &e.tags);
    let leader = match shared.coalescer.join(key, local, valid) {
        Role::Lead(l) => Some(l),
        Role::Wait(rx) => match coalesce::wait(rx, shared.coalesce_timeout).await {
            Some(e) => {
                m.coalesced_hit.inc();
                return Found::Answer(e.to_response(Some(&HIT)));
            }
            None => {
                m.coalesced_fallthrough.inc();
                None
            }
        },
    };
    let mut redis = None;
    if let Some(l2) = &shared.l2 {
        match l2.get(&key).await {
            Lookup::Hit(e, _) => {
                m.hit_l2.inc();
                let e = shared.fill_from_l2(key, *e, local).await;
                if let Some(l) = &leader {
                    l.publish(Some(e.clone()));
                }
                return Found::Answer(e.to_response(Some(&HIT)));
            }
            Lookup::Miss(epoch) => {
                m.miss_l2.inc();
                redis = Some(epoch);
            }
            Lookup::Unavailable => {}
        }
    }
    let start = FillStart {
        local,
        redis,
        at: std::time::Instant::now(),
    };
    Found::Fetch(leader, start, &MISS)
}

async fn read<S>(
    shared: Arc<Shared>,
    policy: Arc<Policy>,
    inner: S,
    req: Request<InboundBody>,
    ttl: Duration,
    bypass: Bypass,
) -> Resp
where
    S: Service<Request<InboundBody>, Response = Resp, Error = Infallible>,
{
    let (parts, body) = req.into_parts();
    let key = key::compute(
        Domain::Response,
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
        &policy.vary,
        None,
    );
    let (leader, start, x_cache) = match lookup(&shared, key, bypass).await {
        Found::Answer(r) => return r,
        Found::Fetch(l, s, x) => (l, s, x),
    };
    let target = Target::of(&parts.uri, false);
    let mut resp = forward(inner, parts, body).await;
    resp.headers_mut().insert(X_CACHE.clone(), x_cache.clone());
    if bypass == Bypass::NoStore {
        return resp;
    }
    attach_fill(&shared, &policy, resp, key, start, leader, ttl, target)
}

/// Tees a cacheable answer into the cache, or says why it is not stored.
#[allow(clippy::too_many_arguments)]
fn attach_fill(
    shared: &Arc<Shared>,
    policy: &Policy,
    resp: Resp,
    key: CacheKey,
    start: FillStart,
    leader: Option<Leader>,
    ttl: Duration,
    target: Target,
) -> Resp {
    let ttl = match policy.storable(resp.status(), resp.headers(), ttl) {
        Ok(ttl) => ttl,
        Err(reason) => {
            // Dropping the leader sends its waiters to the backend themselves.
            shared.metrics.not_stored_because(reason);
            return resp;
        }
    };
    let status = resp.status();
    let headers = entry::kept_headers(resp.headers());
    let (parts, body) = resp.into_parts();
    let shared = shared.clone();
    let body = Tee::wrap(body, policy.max_entry_size as usize, move |outcome| {
        let bytes = match outcome {
            Ok(b) => b,
            Err(cut) => {
                shared.metrics.not_stored(match cut {
                    tee::Cut::Failed => "body_error",
                    tee::Cut::TooLarge => "too_large",
                });
                return;
            }
        };
        tee::spawn(async move {
            match shared.build(&target, status, headers, bytes, ttl) {
                Ok((entry, teach)) => {
                    let entry = Arc::new(entry);
                    if let Some(l) = &leader {
                        l.publish(Some(entry.clone()));
                    }
                    shared.store(key, entry, start, teach, true).await;
                }
                Err(reason) => shared.metrics.not_stored(reason),
            }
            // Only now: requests arriving until the entry is in L1 joined the fill.
            drop(leader);
        });
    });
    Response::from_parts(parts, body)
}

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

async fn write<S>(
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
            let k = key::compute(
                Domain::Suppression,
                &parts.method,
                &target.path,
                parts.uri.query(),
                &parts.headers,
                &policy.vary,
                None,
            );
            Some((k, key::body_hash(b)))
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
            &policy.vary,
            Some(&key::body_hash(b)),
        );
        match lookup(&shared, key, bypass).await {
            Found::Answer(r) => return r,
            Found::Fetch(leader, start, x) => fill = Some((key, leader, start, x, ttl)),
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
    /// The entry for a complete answer: its tags, and the blocks it teaches.
    pub(crate) fn build(
        &self,
        target: &Target,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        ttl: Duration,
    ) -> Result<(Entry, Option<relations::Taught>), &'static str> {
        let mut teach = None;
        let mut tags = if target.message {
            // A cached turn depends on the agent's configuration and memory,
            // which turns themselves do not change for an agent cached this way.
            let agent = target.agent.as_deref().unwrap_or("");
            vec![tags::message_tag(agent)]
        } else {
            teach = relations::taught(
                target.template,
                target.agent.as_deref(),
                target.has_query,
                &body,
            );
            let known = match (&teach, &target.agent) {
                (Some((a, blocks)), Some(pa)) if a == pa => Some(blocks.clone()),
                (_, Some(pa)) => self.relations.get(pa),
                _ => None,
            };
            let item = target.template == "/v1/agents/{agent_id}";
            tags::entry_tags(
                &target.path,
                target.agent.as_deref(),
                item,
                &body,
                known.as_deref(),
            )
        };
        if let Some(p) = tags::path_tag(&target.path) {
            tags.push(p);
        }
        if tags.len() > tags::MAX_TAGS {
            return Err("too_many_tags");
        }
        Ok((Entry::new(status, headers, body, ttl, tags), teach))
    }

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
