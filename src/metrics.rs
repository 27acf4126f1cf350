//! Prometheus metrics: one registry per proxy, families named after the
//! OpenTelemetry HTTP conventions where one exists, `letta_proxy_*` otherwise.
//!
//! Per-backend handles are resolved once, when a backend is created
//! ([`BackendMetrics`]), so the hot path never formats or hashes a backend label.
//! Route labels are templates from [`crate::routes`], never raw paths.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request duration buckets, 5 ms to 10 min: agent turns take minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Every metric family of one proxy instance.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `http_server_request_duration_seconds{http_request_method, http_route, http_response_status_code, backend}`:
    /// from request received until the response body ended (a stream counts whole).
    pub request_duration: HistogramVec,
    /// `http_server_active_requests`: requests whose response body has not ended yet.
    pub active_requests: IntGauge,
    /// `letta_proxy_client_connections`: client connections open (HTTP and HTTPS).
    pub client_connections: IntGauge,
    /// `letta_proxy_client_connections_idle`: HTTP/1 keep-alive client connections
    /// waiting for their next request, parked without buffers.
    pub client_connections_idle: IntGauge,
    backend_requests: IntCounterVec,
    backend_in_flight: IntGaugeVec,
    backend_errors: IntCounterVec,
    backend_ttfb: HistogramVec,
    backend_ejections: IntCounterVec,
    /// `letta_proxy_queue_wait_seconds`: time requests waited for a backend slot.
    pub queue_wait: Histogram,
    /// `letta_proxy_rejections_total{reason}`: requests answered 503 by the limits.
    pub rejections: IntCounterVec,
    /// `letta_proxy_retries_total{reason}`: safe requests retried on another backend.
    pub retries: IntCounterVec,
    /// `letta_proxy_agent_write_wait_seconds`: time writes waited for their agent's earlier writes.
    pub write_wait: Histogram,
    selections: IntCounterVec,
    backend_healthy: IntGaugeVec,
    backend_idle: IntGaugeVec,
    /// `letta_proxy_config_reloads_total{result}`.
    pub reloads: IntCounterVec,
    /// `letta_proxy_config_last_reload_success_timestamp_seconds`.
    pub last_reload_success: prometheus::Gauge,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("unique metric names");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    register(r, HistogramVec::new(opts, labels).expect("valid metric"))
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    register(r, Histogram::with_opts(opts).expect("valid metric"))
}

/// Creates the series of every known label value at zero. A series that first
/// appears at its first increment hides that increment from `rate()` and
/// `increase()`, so an alert on the first shed request, retry or failed reload
/// would never fire, and dashboards would show "no data" instead of 0.
fn known(v: &IntCounterVec, values: &[&str]) {
    for value in values {
        v.with_label_values(&[value]);
    }
}

impl Metrics {
    /// Creates the families and registers them (plus the process collector on Linux).
    pub fn new() -> Metrics {
        let r = Registry::new();
        let request_duration = histogram_vec(
            &r,
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests, until the response body ended.",
            &[
                "http_request_method",
                "http_route",
                "http_response_status_code",
                "backend",
            ],
        );
        let active_requests = register(
            &r,
            IntGauge::new(
                "http_server_active_requests",
                "Requests in flight through the proxy (until the response body ends).",
            )
            .expect("valid metric"),
        );
        let rejections = counter_vec(
            &r,
            "letta_proxy_rejections_total",
            "Requests refused by the limits, by reason (queue_full, queue_timeout, global_limit, agent_write_timeout).",
            &["reason"],
        );
        known(
            &rejections,
            &[
                "queue_full",
                "queue_timeout",
                "global_limit",
                "agent_write_timeout",
            ],
        );
        let retries = counter_vec(
            &r,
            "letta_proxy_retries_total",
            "Requests sent to another backend, by reason (connect: nothing was sent; status: 502/503/504; timeout; error: the exchange broke).",
            &["reason"],
        );
        known(&retries, &["connect", "status", "timeout", "error"]);
        let reloads = counter_vec(
            &r,
            "letta_proxy_config_reloads_total",
            "Configuration reloads, by result (success, failure).",
            &["result"],
        );
        known(&reloads, &["success", "failure"]);
        let client_connections = register(
            &r,
            IntGauge::new(
                "letta_proxy_client_connections",
                "Client connections open (HTTP and HTTPS).",
            )
            .expect("valid metric"),
        );
        let client_connections_idle = register(
            &r,
            IntGauge::new(
                "letta_proxy_client_connections_idle",
                "HTTP/1 keep-alive client connections waiting for their next request, parked without buffers.",
            )
            .expect("valid metric"),
        );
        let metrics = Metrics {
            request_duration,
            active_requests,
            client_connections,
            client_connections_idle,
            backend_requests: counter_vec(
                &r,
                "letta_proxy_backend_requests_total",
                "Responses received from each backend, by status class.",
                &["backend", "status_class"],
            ),
            backend_in_flight: gauge_vec(
                &r,
                "letta_proxy_backend_in_flight",
                "Requests in flight on each backend, counted until the response body ends.",
                &["backend"],
            ),
            backend_errors: counter_vec(
                &r,
                "letta_proxy_backend_errors_total",
                "Failed exchanges with each backend, by kind (connect, timeout, upstream, body).",
                &["backend", "kind"],
            ),
            backend_ttfb: histogram_vec(
                &r,
                "letta_proxy_backend_time_to_first_byte_seconds",
                "Time from sending a request to a backend until its response headers arrived.",
                &["backend"],
            ),
            backend_ejections: counter_vec(
                &r,
                "letta_proxy_backend_ejections_total",
                "Times each backend was ejected by passive health checks.",
                &["backend"],
            ),
            queue_wait: histogram(
                &r,
                "letta_proxy_queue_wait_seconds",
                "Time requests waited in the queue for a backend slot (only requests that waited).",
            ),
            rejections,
            retries,
            write_wait: histogram(
                &r,
                "letta_proxy_agent_write_wait_seconds",
                "Time writes waited for earlier writes to the same agent or block.",
            ),
            selections: counter_vec(
                &r,
                "letta_proxy_balancer_selections_total",
                "Backends chosen by the balancer, by strategy and backend.",
                &["strategy", "backend"],
            ),
            backend_healthy: gauge_vec(
                &r,
                "letta_proxy_backend_healthy",
                "1 when the backend takes traffic (up by probes and not ejected), else 0.",
                &["backend"],
            ),
            backend_idle: gauge_vec(
                &r,
                "letta_proxy_backend_idle_connections",
                "Idle keep-alive connections to the backend: live (with their buffers) or parked (the socket only).",
                &["backend", "state"],
            ),
            reloads,
            last_reload_success: register(
                &r,
                prometheus::Gauge::new(
                    "letta_proxy_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful configuration load or reload.",
                )
                .expect("valid metric"),
            ),
            registry: r,
        };
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");
        metrics
    }

    /// Sets `letta_proxy_backend_healthy` of `backend` (refreshed on each scrape).
    pub fn set_backend_healthy(&self, backend: &str, up: bool) {
        self.backend_healthy
            .with_label_values(&[backend])
            .set(i64::from(up));
    }

    /// Sets `letta_proxy_backend_idle_connections` of `backend` (refreshed on each scrape).
    pub fn set_backend_idle(&self, backend: &str, (live, parked): (usize, usize)) {
        let set = |state: &str, n: usize| {
            self.backend_idle
                .with_label_values(&[backend, state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("live", live);
        set("parked", parked);
    }

    /// The selection counter of `backend` under `strategy`.
    pub fn selection(&self, strategy: &str, backend: &str) -> IntCounter {
        self.selections.with_label_values(&[strategy, backend])
    }

    /// Resolves the label handles of one backend.
    pub fn backend(&self, name: &str) -> BackendMetrics {
        let class = |c: &str| self.backend_requests.with_label_values(&[name, c]);
        let err = |k: &str| self.backend_errors.with_label_values(&[name, k]);
        BackendMetrics {
            responses: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            in_flight: self.backend_in_flight.with_label_values(&[name]),
            connect_errors: err("connect"),
            timeouts: err("timeout"),
            upstream_errors: err("upstream"),
            body_errors: err("body"),
            ttfb: self.backend_ttfb.with_label_values(&[name]),
            ejections: self.backend_ejections.with_label_values(&[name]),
        }
    }

    /// Every family's current values.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The registry, for components that register their own families (the cache).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Pre-resolved metric handles of one backend.
#[derive(Clone)]
pub struct BackendMetrics {
    responses: [IntCounter; 5],
    /// Requests in flight (mirrors the balancer's own counter).
    pub in_flight: IntGauge,
    pub connect_errors: IntCounter,
    pub timeouts: IntCounter,
    pub upstream_errors: IntCounter,
    pub body_errors: IntCounter,
    pub ttfb: Histogram,
    pub ejections: IntCounter,
}

impl BackendMetrics {
    /// Counts one response with `status` from this backend.
    pub fn response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].inc();
    }
}
