//! The cache as a tower layer around the rest of the stack, and its read path.
//!
//! Per request, [`Policy::plan`] decides from the method, the classified route
//! and a few headers. `Pass` goes straight to the inner service (no key, no
//! box, the inner future untouched). A read looks in L1, joins a fill in
//! progress, looks in Redis, and on a miss forwards and copies the body into
//! both tiers as it streams ([`Fill`]). Writes (and the opt-in cached agent
//! turn) take [`super::write`]'s path.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use tower::{Layer, Service, ServiceExt};

use super::coalesce::{self, Leader, Role};
use super::entry::{self, Entry, BYPASS, HIT, MISS, X_CACHE};
use super::key::{self, CacheKey, Domain};
use super::l2::Lookup;
use super::metrics::NotStored;
use super::policy::{Bypass, Plan, Policy};
use super::relations;
use super::tags;
use super::tee::{self, Cut, Tee};
use super::{FillStart, Shared};
use crate::body::{Full, InboundBody, Watched};
use crate::routes::{Classified, RouteKind};

/// What the cache answers with: the inner answer, possibly copied into the
/// cache as it streams, or a cached one.
pub type CacheBody<B> = Watched<B, Tee>;
type Resp<B> = Response<CacheBody<B>>;
type Boxed<B> = Pin<Box<dyn Future<Output = Result<Resp<B>, Infallible>> + Send>>;

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

impl<S, B> Service<Request<InboundBody>> for CacheService<S>
where
    S: Service<Request<InboundBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + Unpin + 'static,
    B: Body<Data = Bytes> + From<Full> + Send + Unpin + 'static,
{
    type Response = Resp<B>;
    type Error = Infallible;
    type Future = Either<Plain<S::Future>, Boxed<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<InboundBody>) -> Self::Future {
        let policy = self.shared.policy();
        let plan = if policy.enabled {
            let route = Classified::of_request(&req);
            policy.plan(req.method(), req.uri().path(), &route, req.headers())
        } else {
            Plan::Pass
        };
        if plan == Plan::Pass {
            return Either::Left(Plain(self.inner.call(req)));
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

/// The inner future, its answer passed through untouched.
pub struct Plain<F>(F);

impl<F, B> Future for Plain<F>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
    B: Body,
{
    type Output = Result<Resp<B>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resp = ready!(Pin::new(&mut self.0).poll(cx));
        Poll::Ready(resp.map(|r| r.map(Watched::plain)))
    }
}

/// An answer from the cache, as the layer's body type.
pub(crate) fn cached<B: Body + From<Full>>(resp: Response<Full>) -> Resp<B> {
    resp.map(|b| Watched::plain(B::from(b)))
}

/// What an answer is about, kept past the request's consumption.
#[derive(Clone)]
pub(crate) struct Target {
    pub path: String,
    pub has_query: bool,
    pub kind: RouteKind,
    pub agent: Option<String>,
    /// An opt-in cached agent turn.
    pub message: bool,
}

impl Target {
    pub(crate) fn of(uri: &Uri, route: &crate::routes::Route<'_>, message: bool) -> Target {
        Target {
            path: uri.path().to_string(),
            has_query: uri.query().is_some_and(|q| !q.is_empty()),
            kind: route.kind,
            agent: route.agent_id.map(str::to_string),
            message,
        }
    }
}

pub(crate) async fn forward<S, B>(
    inner: S,
    parts: http::request::Parts,
    body: InboundBody,
) -> Response<B>
where
    S: Service<Request<InboundBody>, Response = Response<B>, Error = Infallible>,
{
    match inner.oneshot(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Where a lookup left a request.
pub(crate) enum Found {
    /// Answered from the cache.
    Answer(Response<Full>),
    /// Fetch it, then fill from `start` (leading the fill when coalescing),
    /// answering with this `x-cache`.
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

async fn read<S, B>(
    shared: Arc<Shared>,
    policy: Arc<Policy>,
    inner: S,
    req: Request<InboundBody>,
    ttl: Duration,
    bypass: Bypass,
) -> Resp<B>
where
    S: Service<Request<InboundBody>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes> + From<Full>,
{
    let target = Target::of(req.uri(), &Classified::of_request(&req), false);
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
        Found::Answer(r) => return cached(r),
        Found::Fetch(l, s, x) => (l, s, x),
    };
    let mut resp = forward(inner, parts, body).await;
    resp.headers_mut().insert(X_CACHE.clone(), x_cache.clone());
    if bypass == Bypass::NoStore {
        return resp.map(Watched::plain);
    }
    let fill = Fill {
        key,
        start,
        leader,
        ttl,
        target,
    };
    match fill.consumer(&shared, &policy, resp.status(), resp.headers()) {
        Some(tee) => resp.map(|b| Watched::new(b, tee)),
        None => resp.map(Watched::plain),
    }
}

/// Forwards a request that has no key: not looked up, its answer not kept.
pub(crate) async fn unkeyed_pass<S, B>(
    shared: &Shared,
    inner: S,
    parts: http::request::Parts,
    body: InboundBody,
    unkeyed: &key::Unkeyed,
) -> Resp<B>
where
    S: Service<Request<InboundBody>, Response = Response<B>, Error = Infallible>,
    B: Body,
{
    shared.metrics.unkeyed.inc();
    tracing::debug!(header = %unkeyed.0, "cache: a header no key rule names; not cached");
    let mut resp = forward(inner, parts, body).await;
    resp.headers_mut().insert(X_CACHE.clone(), BYPASS.clone());
    resp.map(Watched::plain)
}

/// A miss to be stored once its answer has streamed through.
pub(crate) struct Fill {
    pub key: CacheKey,
    /// What the fill must not have been overtaken by.
    pub start: FillStart,
    /// Set when this request leads a coalesced fill: waiters get its entry.
    pub leader: Option<Leader>,
    pub ttl: Duration,
    pub target: Target,
}

impl Fill {
    /// A copy of the answer that stores it when complete, or `None` (and the
    /// reason counted) when the answer may not be stored.
    pub(crate) fn consumer(
        self,
        shared: &Arc<Shared>,
        policy: &Policy,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<Tee> {
        let ttl = match policy.storable(status, headers, self.ttl) {
            Ok(ttl) => ttl,
            Err(reason) => {
                // Dropping the leader sends its waiters to the backend themselves.
                shared.metrics.not_stored(reason);
                return None;
            }
        };
        let headers = entry::kept_headers(headers);
        let shared = shared.clone();
        Some(Tee::new(policy.max_entry_size as usize, move |outcome| {
            let bytes = match outcome {
                Ok(b) => b,
                Err(cut) => {
                    shared.metrics.not_stored(match cut {
                        Cut::Failed => NotStored::BodyError,
                        Cut::TooLarge => NotStored::TooLarge,
                    });
                    return;
                }
            };
            let Fill {
                key,
                start,
                leader,
                target,
                ..
            } = self;
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
        }))
    }
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
    ) -> Result<(Entry, Option<relations::Taught>), NotStored> {
        let mut teach = None;
        let mut tags = if target.message {
            // A cached turn depends on the agent's configuration and memory,
            // which turns themselves do not change for an agent cached this way.
            let agent = target.agent.as_deref().unwrap_or("");
            vec![tags::message_tag(agent)]
        } else {
            teach = relations::taught(
                target.kind,
                target.agent.as_deref(),
                target.has_query,
                &body,
            );
            let known = match (&teach, &target.agent) {
                (Some((a, blocks)), Some(pa)) if a == pa => Some(blocks.clone()),
                (_, Some(pa)) => self.relations.get(pa),
                _ => None,
            };
            tags::entry_tags(
                &target.path,
                target.agent.as_deref(),
                target.kind == RouteKind::Agent,
                &body,
                known.as_deref(),
            )
        };
        if let Some(p) = tags::path_tag(&target.path) {
            tags.push(p);
        }
        if tags.len() > tags::MAX_TAGS {
            return Err(NotStored::TooManyTags);
        }
        Ok((Entry::new(status, headers, body, ttl, tags), teach))
    }
}
