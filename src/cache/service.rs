//! The cache as a tower layer around the proxy service, and its read path.
//!
//! Per request, [`Policy::plan`] decides from the method, path and a few
//! headers. `Pass` goes straight to the inner service (no key, no box, the
//! inner future untouched). A read looks in L1, joins a fill in progress, looks
//! in Redis, and on a miss forwards and tees the body into both tiers. Writes
//! (and the opt-in cached agent turn) take [`super::write`]'s path.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use tower::{Layer, Service, ServiceExt};

use super::coalesce::{self, Leader, Role};
use super::entry::{self, Entry, BYPASS, HIT, MISS, X_CACHE};
use super::key::{self, CacheKey, Domain};
use super::l2::Lookup;
use super::policy::{Bypass, Plan, Policy};
use super::relations;
use super::tags;
use super::tee::{self, Tee};
use super::{FillStart, Shared};
use crate::proxy::body::{InboundBody, ResponseBody};
use crate::routes;

pub(crate) type Resp = Response<ResponseBody>;
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
                    super::write::write(shared, policy, inner, req, Some((ttl, bypass))).await
                }
                Plan::Write | Plan::Pass => {
                    super::write::write(shared, policy, inner, req, None).await
                }
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
    pub(crate) fn of(uri: &Uri, message: bool) -> Target {
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

pub(crate) async fn forward<S>(inner: S, parts: http::request::Parts, body: InboundBody) -> Resp
where
    S: Service<Request<InboundBody>, Response = Resp, Error = Infallible>,
{
    match inner.oneshot(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Where a lookup left a request.
pub(crate) enum Found {
    /// Answered from the cache.
    Answer(Resp),
    /// Fetch it: lead the fill (when coalescing), store from `start`, say `x_cache`.
    Fetch(Option<Leader>, FillStart, &'static HeaderValue),
}

pub(crate) async fn lookup(shared: &Arc<Shared>, key: CacheKey, bypass: Bypass) -> Found {
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
        &policy.headers,
        None,
    );
    let key = match key {
        Ok(k) => k,
        Err(unkeyed) => return unkeyed_pass(&shared, inner, parts, body, &unkeyed).await,
    };
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

/// Forwards a request that has no key: not looked up, its answer not kept.
pub(crate) async fn unkeyed_pass<S>(
    shared: &Shared,
    inner: S,
    parts: http::request::Parts,
    body: InboundBody,
    unkeyed: &key::Unkeyed,
) -> Resp
where
    S: Service<Request<InboundBody>, Response = Resp, Error = Infallible>,
{
    shared.metrics.unkeyed.inc();
    tracing::debug!(header = %unkeyed.0, "cache: a header no key rule names; not cached");
    let mut resp = forward(inner, parts, body).await;
    resp.headers_mut().insert(X_CACHE.clone(), BYPASS.clone());
    resp
}

/// Tees a cacheable answer into the cache, or says why it is not stored.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attach_fill(
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
}
