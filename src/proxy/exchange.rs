//! One request's way to a backend: prepare it, then attempt backends until
//! [`super::retry::decide`] delivers or fails.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use tower::retry::budget::Budget;

use super::retry::{self, Decision, Final};
use super::upstream::{ProxyBody, UpstreamHold};
use super::{headers, with_rng, Inner, Live};
use crate::backend::pool::{fit_to_connection, ConnectError, Pooled};
use crate::backend::queue::QueueError;
use crate::backend::{Backend, InFlight};
use crate::balance::PickRequest;
use crate::body::slot::{client_fault, BodySlot, ClientFault, RequestBody};
use crate::body::InboundBody;
use crate::error::ProxyError;
use crate::routes::Classified;

/// One request being forwarded.
pub(super) struct Exchange<'a> {
    inner: &'a Inner,
    live: &'a Live,
    peer: Option<IpAddr>,
}

/// How sending on one backend went.
enum Sent {
    Answer(Response<Incoming>, Pooled),
    /// Nothing reached the backend (the request's headers are back in its parts).
    Unreachable(ConnectError),
    Broken(hyper::Error),
    TimedOut,
}

impl<'a> Exchange<'a> {
    pub(super) fn new(inner: &'a Inner, live: &'a Live, peer: Option<IpAddr>) -> Self {
        Exchange { inner, live, peer }
    }

    /// Forwards `req`; the error is what the client is answered with.
    pub(super) async fn run(
        self,
        req: Request<InboundBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let since = Instant::now();
        let classified = req.extensions().get::<Classified>().copied();
        let mount = mount_prefix(&req);
        // Came over the HTTPS listener (an embedding application terminating
        // TLS itself may say so too).
        let over_tls = req.extensions().get::<crate::tls::ClientTls>().is_some();
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let route = match classified {
            Some(c) => c.route(pq.path()),
            None => crate::routes::classify(pq.path()),
        };
        let server = &self.live.config.server;
        let declared_len = content_length(&parts.headers);
        if declared_len.is_some_and(|len| len > server.max_body_size) {
            return Err(ProxyError::BodyTooLarge {
                limit: server.max_body_size,
            });
        }
        let client = self.prepare_headers(&mut parts, over_tls, mount);
        // The host Letta sees: the client's (it builds redirects from it) or the backend's.
        let send_host = client
            .host
            .clone()
            .filter(|_| self.live.config.server.preserve_host);
        let safe = route.is_read(&parts.method);
        // Safe requests with a small body are read into memory so they can be retried.
        let body = match (safe, declared_len) {
            (true, Some(len)) if len > 0 && len <= self.live.config.limits.retry_max_body => {
                buffer(body).await?
            }
            _ => body,
        };
        let slot = BodySlot::new(body, server.max_body_size);
        // Owned: `parts.headers` is handed to the backend below.
        let header_agent: Option<String> = match route.agent_id {
            Some(_) => None,
            None => self
                .live
                .affinity_header
                .as_ref()
                .and_then(|h| parts.headers.get(h))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let pick = PickRequest {
            agent_id: route.agent_id.or(header_agent.as_deref()),
        };
        let upstreams = &self.inner.upstreams;
        let backend_count = upstreams.load().backends.len();
        self.live.retry_budget.deposit();
        let mut tried = Tried::default();
        let mut retried = false;
        let mut last_err: Option<ProxyError> = None;
        loop {
            let (index, in_flight) = match self.acquire(&pick, tried.as_slice()).await {
                Ok(got) => got,
                // A backend that failed earlier explains more than "no backend left".
                Err(e) => return Err(last_err.unwrap_or(e)),
            };
            let backend = in_flight.backend().clone();
            tried.push(index);
            let req = retry::Request {
                safe,
                replayable: slot.is_replayable(),
                retried,
                others_left: tried.len() < backend_count,
            };
            let may_resend = req.safe && req.replayable && !req.retried && req.others_left;
            let sent_at = Instant::now();
            let host = send_host.as_ref();
            let sent = self
                .attempt(&backend, &mut parts, (&pq, host), &slot, may_resend)
                .await;
            let (attempt, err, answer) = self.judge(&backend, sent, sent_at.elapsed());
            let decision = retry::decide(attempt, req);
            let (reason, otherwise) = match decision {
                Decision::Deliver => {
                    let (resp, conn) = answer.expect("delivered answers exist");
                    return Ok(self.deliver(resp, conn, in_flight, &client, since));
                }
                Decision::Fail => return Err(err.expect("failed attempts have an error")),
                Decision::Next {
                    reason,
                    needs_budget,
                    otherwise,
                } => {
                    if needs_budget && !self.live.retry_budget.withdraw() {
                        (None, otherwise)
                    } else {
                        (Some(reason), otherwise)
                    }
                }
            };
            let Some(reason) = reason else {
                // The budget said no.
                return match (otherwise, answer) {
                    (Final::Deliver, Some((resp, conn))) => {
                        Ok(self.deliver(resp, conn, in_flight, &client, since))
                    }
                    _ => Err(err.expect("failed attempts have an error")),
                };
            };
            drop(answer);
            drop(in_flight);
            if reason != retry::Reason::Connect {
                retried = true;
            }
            last_err = err;
            self.inner
                .metrics
                .retries
                .with_label_values(&[reason.label()])
                .inc();
            tracing::debug!(backend = %backend.name, reason = reason.label(), "retrying on another backend");
        }
    }

    /// Applies the forwarding header rules in place; returns what the client addressed.
    fn prepare_headers(
        &self,
        parts: &mut http::request::Parts,
        over_tls: bool,
        mount: Option<Arc<str>>,
    ) -> ClientView {
        // The host the client addressed: `Host` for HTTP/1, `:authority` for h2.
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::add_forwarded(&mut parts.headers, self.peer, host.as_ref(), over_tls);
        // Set per attempt (`upstream_request`): the form depends on the connection.
        parts.headers.remove(header::HOST);
        ClientView {
            // An outer proxy's X-Forwarded-Proto counts: it is what the client used.
            https: headers::forwarded_https(&parts.headers),
            host,
            mount,
        }
    }

    /// Waits for a backend slot: picks a backend not tried yet and takes one of
    /// its in-flight slots, queueing while every usable backend is at its cap.
    async fn acquire(
        &self,
        pick: &PickRequest<'_>,
        tried: &[usize],
    ) -> Result<(usize, InFlight), ProxyError> {
        let upstreams = &self.inner.upstreams;
        let metrics = &self.inner.metrics;
        let acquired = upstreams
            .queue
            .acquire(|| with_rng(|rng| upstreams.try_acquire(pick, tried, rng)))
            .await;
        match acquired {
            Ok((got, waited)) => {
                if !waited.is_zero() {
                    metrics.queue_wait.observe(waited.as_secs_f64());
                }
                Ok(got)
            }
            Err(QueueError::Unusable) => Err(ProxyError::NoBackend),
            Err(QueueError::Full) => {
                metrics.rejections.with_label_values(&["queue_full"]).inc();
                Err(ProxyError::Overloaded(
                    "every backend is at its limit and the queue is full",
                ))
            }
            Err(QueueError::TimedOut) => {
                metrics
                    .rejections
                    .with_label_values(&["queue_timeout"])
                    .inc();
                Err(ProxyError::Overloaded(
                    "every backend stayed at its limit for limits.queue_timeout",
                ))
            }
        }
    }

    /// Sends once on `backend`. Connects (or reuses) before the request is
    /// built: a failed connect consumes nothing, so the next backend gets the
    /// request whatever its method.
    async fn attempt(
        &self,
        backend: &Backend,
        parts: &mut http::request::Parts,
        (pq, host): (&PathAndQuery, Option<&HeaderValue>),
        slot: &BodySlot,
        may_resend: bool,
    ) -> Sent {
        let mut conn = match backend.pool.checkout(&backend.url).await {
            Ok(conn) => conn,
            Err(e) => return Sent::Unreachable(e),
        };
        let target = Target {
            pq,
            host,
            h2: conn.is_h2(),
        };
        let up = upstream_request(parts, &target, backend, slot, may_resend);
        let timeout = self.live.config.server.response_header_timeout;
        match tokio::time::timeout(timeout, send_on(backend, &mut conn, up)).await {
            Ok(Ok(resp)) => Sent::Answer(resp, conn),
            Ok(Err(SendError::NotSent(e, unsent))) => {
                // The next backend gets the headers the client sent (the host
                // is set again per attempt).
                if let Some(req) = unsent {
                    parts.headers = req.into_parts().0.headers;
                    parts.headers.remove(header::HOST);
                }
                Sent::Unreachable(e)
            }
            Ok(Err(SendError::Failed(e))) => Sent::Broken(e),
            Err(_elapsed) => Sent::TimedOut,
        }
    }

    /// Turns an attempt into the retry rule's input, the error to answer with
    /// if it fails, and the answer if there is one; feeds passive health,
    /// latency and the backend's metrics on the way.
    #[allow(clippy::type_complexity)]
    fn judge(
        &self,
        backend: &Backend,
        sent: Sent,
        elapsed: std::time::Duration,
    ) -> (
        retry::Attempt,
        Option<ProxyError>,
        Option<(Response<Incoming>, Pooled)>,
    ) {
        let upstreams = &self.inner.upstreams;
        let now = upstreams.now_ns();
        let failure = || {
            backend.latency.observe_error(elapsed, now);
            upstreams.record_failure(backend);
        };
        let name = || backend.name.to_string();
        match sent {
            Sent::Answer(resp, conn) => {
                let status = resp.status();
                backend.metrics.ttfb.observe(elapsed.as_secs_f64());
                backend.metrics.response(status.as_u16());
                if status.is_server_error() {
                    failure();
                } else {
                    backend.latency.observe(elapsed, now);
                    upstreams.record_success(backend);
                }
                // An answer is always delivered in the end: no error to keep.
                (
                    retry::Attempt::Answered(status.as_u16()),
                    None,
                    Some((resp, conn)),
                )
            }
            Sent::Unreachable(err) => {
                backend.metrics.connect_errors.inc();
                failure();
                tracing::warn!(backend = %backend.name, error = %err, "backend unreachable");
                let e = ProxyError::Connect {
                    backend: name(),
                    reason: err.summary(),
                    source: Box::new(err),
                };
                (retry::Attempt::NotSent, Some(e), None)
            }
            Sent::Broken(err) => match client_fault(&err) {
                Some(fault) => {
                    // The client's body broke (too large, bad chunking, the client
                    // left): nothing to hold against the backend.
                    tracing::debug!(backend = %backend.name, error = %err, "client body failed");
                    let e = match fault {
                        ClientFault::TooLarge => ProxyError::BodyTooLarge {
                            limit: self.live.config.server.max_body_size,
                        },
                        ClientFault::Unreadable => {
                            ProxyError::BadRequest("the request body could not be read")
                        }
                    };
                    (retry::Attempt::ClientFault, Some(e), None)
                }
                None => {
                    backend.metrics.upstream_errors.inc();
                    failure();
                    tracing::warn!(backend = %backend.name, error = %err, "backend failed");
                    let e = ProxyError::Upstream {
                        backend: name(),
                        source: Box::new(err),
                    };
                    (retry::Attempt::Broken, Some(e), None)
                }
            },
            Sent::TimedOut => {
                backend.metrics.timeouts.inc();
                failure();
                let e = ProxyError::Timeout {
                    backend: name(),
                    what: "no response headers in time",
                };
                (retry::Attempt::TimedOut, Some(e), None)
            }
        }
    }

    /// The backend's answer as the client gets it, holding the slot and the
    /// connection until its body ends.
    fn deliver(
        &self,
        resp: Response<Incoming>,
        conn: Pooled,
        in_flight: InFlight,
        client: &ClientView,
        since: Instant,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        let backend = in_flight.backend().clone();
        let h = &mut parts.headers;
        headers::strip_hop_by_hop(h);
        let side = headers::ClientSide {
            host: client.host.as_ref(),
            https: client.https,
            mount: client.mount.as_deref().unwrap_or(""),
        };
        headers::rewrite_location(h, &backend.url, side);
        h.insert(headers::BACKEND.clone(), backend.name_header.clone());
        let hold = UpstreamHold {
            status: parts.status.as_u16(),
            in_flight,
            conn: Some(conn),
            clock: self.inner.upstreams.epoch(),
            since,
        };
        let idle = self.live.config.server.body_idle_timeout;
        Response::from_parts(parts, ProxyBody::upstream(body, idle, hold))
    }
}

/// Where the gateway is mounted inside an application's router (`/letta`
/// when nested under it), from axum's `OriginalUri`: Letta's redirects must
/// keep it.
fn mount_prefix<B>(req: &Request<B>) -> Option<Arc<str>> {
    let original = req.extensions().get::<axum::extract::OriginalUri>()?;
    let prefix = original.path().strip_suffix(req.uri().path())?;
    (!prefix.is_empty()).then(|| Arc::from(prefix))
}

/// What the client addressed: the redirects it gets back must point there.
struct ClientView {
    /// `Host` (HTTP/1) or `:authority` (HTTP/2).
    host: Option<HeaderValue>,
    /// It used HTTPS, to this listener or to a proxy in front.
    https: bool,
    /// The gateway's mount point in an embedding application (`/letta`).
    mount: Option<Arc<str>>,
}

/// Where one attempt sends a request.
struct Target<'a> {
    pq: &'a PathAndQuery,
    /// The host to name (the client's with `preserve_host`), else the backend's.
    host: Option<&'a HeaderValue>,
    h2: bool,
}

/// The request as sent to `backend`: same method, path and query byte for
/// byte, prepared headers (copied when the request may be sent again, moved
/// otherwise), in the form the connection speaks.
fn upstream_request(
    parts: &mut http::request::Parts,
    target: &Target<'_>,
    backend: &Backend,
    slot: &BodySlot,
    may_resend: bool,
) -> Request<RequestBody> {
    let mut up = Request::new(slot.attempt());
    *up.method_mut() = parts.method.clone();
    *up.headers_mut() = if may_resend {
        parts.headers.clone()
    } else {
        std::mem::take(&mut parts.headers)
    };
    let host = match target.host {
        Some(h) => h.clone(),
        None => HeaderValue::from_str(backend.url.authority.as_str())
            .expect("authority is a valid header"),
    };
    up.headers_mut().insert(header::HOST, host);
    *up.uri_mut() = Uri::from(target.pq.clone());
    fit_to_connection(&mut up, &backend.url, target.h2);
    up
}

/// Why an exchange failed, split by whether any of the request was sent.
enum SendError {
    /// Nothing was sent (connect failed); the request is handed back when it was built.
    /// (Boxed: the error path must not make every `Result` carrying it large.)
    NotSent(ConnectError, Option<Box<Request<RequestBody>>>),
    /// The request was (or may have been) sent, then the exchange broke.
    Failed(hyper::Error),
}

/// Sends `req` on `conn`. A reused connection that the backend closed while it
/// was idle hands the request back unsent; it then goes out on a fresh connection.
async fn send_on(
    backend: &Backend,
    conn: &mut Pooled,
    mut req: Request<RequestBody>,
) -> Result<Response<Incoming>, SendError> {
    loop {
        let stale = conn.ready().await.is_err();
        if !stale {
            match conn.try_send(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if conn.reused => req = unsent,
                    _ => return Err(SendError::Failed(e.into_error())),
                },
            }
        } else if !conn.reused {
            return Err(SendError::NotSent(
                ConnectError::Io(std::io::Error::other("new connection closed before use")),
                Some(Box::new(req)),
            ));
        }
        match backend.pool.connect(&backend.url).await {
            Ok(fresh) => {
                // The fresh connection may speak the other protocol.
                fit_to_connection(&mut req, &backend.url, fresh.is_h2());
                *conn = fresh;
            }
            Err(e) => return Err(SendError::NotSent(e, Some(Box::new(req)))),
        }
    }
}

/// Backends a request already tried: inline for the usual few, no allocation.
#[derive(Default)]
struct Tried {
    inline: [usize; 4],
    len: usize,
    more: Vec<usize>,
}

impl Tried {
    fn push(&mut self, i: usize) {
        if self.more.is_empty() && self.len < self.inline.len() {
            self.inline[self.len] = i;
            self.len += 1;
        } else {
            if self.more.is_empty() {
                self.more.extend_from_slice(&self.inline);
            }
            self.more.push(i);
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn as_slice(&self) -> &[usize] {
        if self.more.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.more
        }
    }
}

/// Reads a small request body into memory (its length is known and capped).
async fn buffer(body: InboundBody) -> Result<InboundBody, ProxyError> {
    use http_body_util::BodyExt;
    match body.collect().await {
        Ok(c) => Ok(InboundBody::from(c.to_bytes())),
        Err(_) => Err(ProxyError::BadRequest("the request body could not be read")),
    }
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
