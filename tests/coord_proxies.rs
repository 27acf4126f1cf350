//! Several proxies on one Redis behave as one, through real sockets: gateways
//! (each with its own Redis client, as separate processes have) or the
//! built binary in front of stand-in Letta servers, on a real `redis-server`.
//!
//! - writes to one agent spread over three instances never overlap at the
//!   backend (and, as a control, they do with coordination off);
//! - a per-backend cap is shared out: three instances never put more than
//!   the cap on a backend; a clean stop gives its share back at once;
//! - an instance killed (SIGKILL) while its stream holds an agent's lease
//!   blocks that agent's next write for at most the lease TTL;
//! - with Redis killed every request is answered, each instance orders its
//!   own writes, caps go back to whole, and leases return with Redis.
//!
//! Each test returns early, loudly, when `redis-server` is missing (and fails
//! under `LETTA_PROXY_REQUIRE_REDIS=1`).

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use letta_proxy::standin::StandIn;
use letta_proxy::Config;
use serde_json::Value;
use support::process::ProxyProcess;
use support::redis::RedisServer;
use support::{client, eventually, metric, TestProxy, AGENT};

const OTHER_AGENT: &str = "agent-00000000-0000-4000-8000-000000000002";
const WAIT: Duration = Duration::from_secs(20);

/// A config over `backends` on `redis`, cache and health probes off, then
/// `extra` (whole TOML sections). Generous Redis timeout: debug builds on a
/// shared machine; a call that times out would count as a fallback.
fn config_text(redis: &str, backends: &[&StandIn], extra: &str) -> String {
    let mut text = format!(
        r#"
[health]
enabled = false
[cache]
enabled = false
[server]
shutdown_grace = "5s"
[redis]
url = "{redis}"
timeout = "300ms"
lease_ttl = "2s"
heartbeat = "1s"
breaker_cooldown = "300ms"
{extra}
"#
    );
    for b in backends {
        text.push_str(&format!(
            "[[backends]]\nname = \"{}\"\nurl = \"{}\"\n",
            b.name,
            b.url()
        ));
    }
    text
}

fn config(redis: &str, backends: &[&StandIn], extra: &str) -> Config {
    Config::from_toml(
        &config_text(redis, backends, extra),
        "test config",
        std::iter::empty(),
    )
    .expect("valid test config")
}

/// `n` gateways on `config`; with coordination on, waits until each holds
/// the lease wake-up channel and sees all `n` instances.
async fn instances(n: usize, config: &Config) -> Vec<TestProxy> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TestProxy::start(config.clone()).await);
    }
    for p in &v {
        let Some(c) = p.gateway.coordinator() else {
            continue;
        };
        eventually(WAIT, "every instance sees the others", || async {
            let s = c.status();
            s.redis_available && s.lease_wakeups && s.membership_fresh && s.instances.len() == n
        })
        .await;
    }
    v
}

/// This instance's cap on `backend`, as `/-/stats` shows it.
fn share(p: &TestProxy, backend: &str) -> Option<u64> {
    p.gateway
        .stats()
        .backends
        .iter()
        .find(|b| b.name == backend)
        .expect("backend")
        .share
}

async fn sum_metric(proxies: &[TestProxy], prefix: &str) -> f64 {
    let mut total = 0.0;
    for p in proxies {
        total += metric(p, prefix).await.unwrap_or(0.0);
    }
    total
}

const ACQUIRED: &str = "letta_proxy_coord_leases_total{outcome=\"acquired\"}";
const FALLBACK: &str = "letta_proxy_coord_leases_total{outcome=\"fallback\"}";

/// 24 writes to AGENT (PATCHes, messages, streamed messages; 20-40 ms each
/// at the backend), all sent at once, spread round-robin over `proxies`.
/// Returns the statuses.
async fn write_burst(proxies: &[TestProxy]) -> Vec<u16> {
    let c = client();
    let writes = (0..24).map(|i| {
        let p = &proxies[i % proxies.len()];
        let req = match i % 3 {
            0 => c.patch(p.url(&format!("/v1/agents/{AGENT}?delay_ms=20&i={i}"))),
            1 => c.post(p.url(&format!("/v1/agents/{AGENT}/messages?delay_ms=20&i={i}"))),
            _ => c.post(p.url(&format!(
                "/v1/agents/{AGENT}/messages/stream?events=2&interval_ms=20&i={i}"
            ))),
        };
        async move {
            let r = req.body("{}").send().await.expect("answered");
            let status = r.status().as_u16();
            r.bytes().await.expect("whole body");
            status
        }
    });
    join_all(writes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_to_one_agent_through_three_instances_never_overlap_at_the_backend() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let be = StandIn::start("be1").await.unwrap();
    let proxies = instances(3, &config(&redis.url(), &[&be], "")).await;

    let statuses = write_burst(&proxies).await;

    assert_eq!(statuses, vec![200; 24]);
    assert_eq!(
        be.stats.peak_writes(AGENT),
        1,
        "two writes to one agent ran at once at the backend"
    );
    assert_eq!(
        sum_metric(&proxies, ACQUIRED).await,
        24.0,
        "one lease per write"
    );
    assert_eq!(sum_metric(&proxies, FALLBACK).await, 0.0);
    // Released at the end of each body: nothing held, nothing queued.
    for p in &proxies {
        let s = p.gateway.coordinator().unwrap().status();
        assert_eq!((s.leases_held, s.write_ordering), (0, "redis"));
    }
}

/// The control of the test above: the same burst through three instances
/// that do not coordinate does overlap at the backend (so the test above
/// can see an overlap).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_coordination_the_same_writes_overlap() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let be = StandIn::start("be1").await.unwrap();
    let off = "[limits]\ncoordinate = false\n";
    let proxies = instances(3, &config(&redis.url(), &[&be], off)).await;
    assert!(proxies[0].gateway.coordinator().is_none());

    let statuses = write_burst(&proxies).await;

    assert_eq!(statuses, vec![200; 24]);
    assert!(
        be.stats.peak_writes(AGENT) > 1,
        "without coordination, writes through different instances run at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_cap_is_shared_by_three_instances_and_a_clean_stop_gives_its_share_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (be1, be2) = (
        StandIn::start("be1").await.unwrap(),
        StandIn::start("be2").await.unwrap(),
    );
    let capped = "[limits]\nmax_in_flight_per_backend = 2\nqueue_timeout = \"20s\"\n";
    let mut proxies = instances(3, &config(&redis.url(), &[&be1, &be2], capped)).await;
    // The shares of each backend add up to its cap (1 + 1 + 0).
    for name in ["be1", "be2"] {
        eventually(WAIT, "shares applied", || async {
            proxies.iter().map(|p| share(p, name).unwrap()).sum::<u64>() == 2
        })
        .await;
    }
    let stats = serde_json::to_value(proxies[0].gateway.stats()).unwrap();
    let coordination = &stats["coordination"];
    assert_eq!(coordination["write_ordering"], "redis", "{coordination}");
    assert_eq!(coordination["instances"].as_array().unwrap().len(), 3);
    assert!(
        coordination["instances"][0].get("address").is_none(),
        "no internal address on /-/stats: {coordination}"
    );

    // 36 slow reads at once, spread over the instances: each backend sees at
    // most its cap (with whole caps per instance it would see up to 6).
    let c = client();
    let reads = (0..36).map(|i| {
        let url = proxies[i % 3].url(&format!("/v1/runs/?delay_ms=150&i={i}"));
        let c = c.clone();
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let statuses: Vec<u16> = join_all(reads)
        .await
        .into_iter()
        .map(|r| r.unwrap_or(0))
        .collect();
    assert_eq!(
        statuses,
        vec![200; 36],
        "every instance has a share somewhere"
    );
    let peaks = (be1.stats.peak(), be2.stats.peak());
    println!("backend peaks with cap 2 over three instances: {peaks:?}");
    assert!(
        peaks.0 <= 2 && peaks.1 <= 2,
        "a cap was exceeded: {peaks:?}"
    );
    assert!(
        peaks.0.max(peaks.1) == 2,
        "the load reached the cap: {peaks:?}"
    );

    // A clean stop leaves the registry at once: the others see two instances
    // at their next heartbeat (1 s), long before a dead one would drop out
    // (3 heartbeats after its last), and split each cap 1 + 1.
    let stopped = Instant::now();
    proxies.pop().unwrap().shutdown().await.unwrap().unwrap();
    for p in &proxies {
        let c = p.gateway.coordinator().unwrap();
        eventually(WAIT, "the stopped instance left", || async {
            c.status().instances.len() == 2
        })
        .await;
    }
    let seen = stopped.elapsed();
    println!("a clean stop was seen by the others after {seen:?}");
    assert!(seen < Duration::from_millis(2500), "{seen:?}");
    for name in ["be1", "be2"] {
        eventually(WAIT, "shares follow", || async {
            proxies.iter().all(|p| share(p, name) == Some(1))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_holding_a_lease_blocks_the_agent_for_at_most_the_ttl() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let be = StandIn::start("be1").await.unwrap();
    let ttl = Duration::from_secs(2);
    let text = config_text(&redis.url(), &[&be], "");
    let mut a = ProxyProcess::start(&text).await;
    let b = ProxyProcess::start(&text).await;
    let c = client();
    for p in [&a, &b] {
        eventually(WAIT, "both instances coordinate", || async {
            let s: Value = c
                .get(p.url("/-/stats"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let co = &s["coordination"];
            co["lease_wakeups"] == true && co["instances"].as_array().map(Vec::len) == Some(2)
        })
        .await;
    }

    // A long stream through a holds the agent's lease.
    let mut stream = c
        .post(a.url(&format!(
            "/v1/agents/{AGENT}/messages/stream?events=2000&interval_ms=20"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    stream.chunk().await.unwrap().expect("first event");
    // A write through b waits behind it, queued in Redis.
    let write = tokio::spawn({
        let url = b.url(&format!("/v1/agents/{AGENT}?w=after-kill"));
        let c = c.clone();
        async move {
            let r = c.patch(url).body("{}").send().await.unwrap();
            (r.status().as_u16(), Instant::now())
        }
    });
    eventually(WAIT, "b's write queued for the lease", || async {
        let mut conn = redis.connection();
        let queued: usize = redis::cmd("ZCARD")
            .arg(format!("{{letta-proxy:lease:{AGENT}}}:q"))
            .query(&mut conn)
            .unwrap();
        queued == 1
    })
    .await;
    assert!(!write.is_finished(), "b's write waits for a's stream");
    assert_eq!(
        be.stats.writes_now(AGENT),
        1,
        "only a's stream at the backend"
    );

    // kill -9: no release, no goodbye.
    let killed = Instant::now();
    a.kill();
    let (status, done) = tokio::time::timeout(WAIT, write).await.unwrap().unwrap();
    let after = done.duration_since(killed);
    println!("the next write went {after:?} after its lease holder was killed (lease_ttl {ttl:?})");
    assert_eq!(status, 200);
    assert!(
        after <= ttl + Duration::from_secs(1),
        "blocked longer than the lease TTL: {after:?}"
    );
    assert_eq!(be.stats.peak_writes(AGENT), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_killed_every_request_is_answered_and_each_instance_orders_its_writes() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let be = StandIn::start("be1").await.unwrap();
    let capped = "[limits]\nmax_in_flight_per_backend = 8\n";
    let proxies = instances(2, &config(&redis.url(), &[&be], capped)).await;
    eventually(WAIT, "cap shared 4 + 4", || async {
        proxies.iter().all(|p| share(p, "be1") == Some(4))
    })
    .await;

    redis.kill();
    // Writes to AGENT through the first instance and to OTHER_AGENT through
    // the second, with reads, all at once: all answered, and each instance
    // still runs its writes to one agent one at a time.
    let c = client();
    let started = Instant::now();
    let mut requests = Vec::new();
    for i in 0..30 {
        let (p, agent) = match i % 2 {
            0 => (&proxies[0], AGENT),
            _ => (&proxies[1], OTHER_AGENT),
        };
        let req = if i % 3 == 0 {
            c.get(p.url(&format!("/v1/agents/{agent}?i={i}")))
        } else {
            c.patch(p.url(&format!("/v1/agents/{agent}?delay_ms=20&i={i}")))
                .body("{}")
        };
        requests.push(async move { req.send().await.map(|r| r.status().as_u16()) });
    }
    let statuses: Vec<u16> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap_or(0))
        .collect();
    let took = started.elapsed();
    assert_eq!(statuses, vec![200; 30], "Redis down fails no request");
    assert!(
        took < Duration::from_secs(10),
        "nobody waited for Redis: {took:?}"
    );
    assert_eq!(be.stats.peak_writes(AGENT), 1);
    assert_eq!(be.stats.peak_writes(OTHER_AGENT), 1);
    for p in &proxies {
        assert!(
            metric(p, FALLBACK).await.unwrap() >= 1.0,
            "fallbacks counted"
        );
        let s = p.gateway.coordinator().unwrap().status();
        assert_eq!(s.write_ordering, "local", "{s:?}");
        let page = serde_json::to_value(p.gateway.stats()).unwrap();
        assert_eq!(page["coordination"]["write_ordering"], "local");
    }
    // The registry view goes stale: each instance takes the whole cap.
    for p in &proxies {
        eventually(WAIT, "whole cap once the view is stale", || async {
            share(p, "be1") == Some(8)
        })
        .await;
    }

    // Redis back (empty): leases and shares again.
    redis.restart();
    for p in &proxies {
        let coord = p.gateway.coordinator().unwrap();
        eventually(WAIT, "coordination back", || async {
            let s = coord.status();
            s.write_ordering == "redis" && s.membership_fresh && s.instances.len() == 2
        })
        .await;
        eventually(WAIT, "shares back", || async { share(p, "be1") == Some(4) }).await;
    }
    let before = sum_metric(&proxies, ACQUIRED).await;
    let r = c
        .patch(proxies[1].url(&format!("/v1/agents/{AGENT}?after=restart")))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sum_metric(&proxies, ACQUIRED).await, before + 1.0);
}

/// Agent affinity is a function of the config: two separately started
/// processes with the same config send each agent to the same home backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_with_one_config_send_each_agent_to_the_same_backend() {
    let backends = support::standins(3).await;
    let mut text = String::from(
        "[balancer]\nstrategy = \"agent_affinity\"\n[health]\nenabled = false\n[cache]\nenabled = false\n",
    );
    for b in &backends {
        text.push_str(&format!(
            "[[backends]]\nname = \"{}\"\nurl = \"{}\"\n",
            b.name,
            b.url()
        ));
    }
    let (one, two) = (
        ProxyProcess::start(&text).await,
        ProxyProcess::start(&text).await,
    );
    let c = client();
    let mut per_backend = std::collections::HashMap::<String, usize>::new();
    for i in 0..300 {
        let agent = format!("agent-{i:08x}-1111-4000-8000-000000000000");
        let mut homes = Vec::new();
        for p in [&one, &two] {
            let r = c
                .get(p.url(&format!("/v1/agents/{agent}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            homes.push(support::backend_of(&r));
        }
        assert_eq!(homes[0], homes[1], "{agent} has two homes: {homes:?}");
        *per_backend.entry(homes.remove(0)).or_default() += 1;
    }
    // Not a degenerate ring: every backend is home to a fair part.
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    assert!(per_backend.values().all(|n| *n >= 50), "{per_backend:?}");
}
