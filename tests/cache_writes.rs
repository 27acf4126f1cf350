//! The response cache through real sockets, in-process tier: what a write makes
//! stale (by id, collection, block, across callers), writes racing reads,
//! streamed turns, unchanged-write suppression and the opt-in message cache.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use support::cache::*;
use support::{client, standins};

const TOOLS: &str = "/v1/tools/";

#[tokio::test]
async fn a_write_drops_what_it_names_and_its_collection_lists_only() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let agent = format!("/v1/agents/{A}");
    let other = format!("/v1/agents/{A2}");
    let reads = [agent.as_str(), other.as_str(), "/v1/agents/", TOOLS];
    for p in reads {
        n.get(p, &[]).await;
    }
    let w = n
        .send(Method::POST, &format!("{agent}/messages"), &[], Some("{}"))
        .await;
    assert_eq!(w.status, 200);
    assert_eq!(
        n.get(&agent, &[]).await.x_cache(),
        "MISS",
        "the agent changed"
    );
    assert_eq!(
        n.get("/v1/agents/", &[]).await.x_cache(),
        "MISS",
        "lists of agents"
    );
    assert_eq!(
        n.get(&other, &[]).await.x_cache(),
        "HIT",
        "another agent did not"
    );
    assert_eq!(n.get(TOOLS, &[]).await.x_cache(), "HIT", "tools did not");
    // A failed write changes nothing.
    n.send(
        Method::PATCH,
        &format!("{agent}?status=500"),
        &[],
        Some("{}"),
    )
    .await;
    assert_eq!(n.get(&agent, &[]).await.x_cache(), "HIT");
}

#[tokio::test]
async fn evictions_cross_identities() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let agent = format!("/v1/agents/{A}");
    let alice = [("authorization", "Bearer alice")];
    n.get(&agent, &alice).await;
    assert_eq!(n.get(&agent, &alice).await.x_cache(), "HIT");
    let bob = [("authorization", "Bearer bob")];
    n.send(Method::PATCH, &agent, &bob, Some(r#"{"name":"x"}"#))
        .await;
    assert_eq!(n.get(&agent, &alice).await.x_cache(), "MISS");
}

#[tokio::test]
async fn a_block_write_drops_every_answer_that_shows_the_block() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let holder = format!("/v1/agents/{A}?mention={B}");
    let bystander = format!("/v1/agents/{A2}?mention={B2}");
    let block = format!("/v1/blocks/{B}");
    let ctx = format!("/v1/agents/{A}/context");
    for p in [&holder, &bystander, &block, &ctx] {
        n.get(p, &[]).await;
    }
    let w = n
        .send(Method::PATCH, &block, &[], Some(r#"{"value":"new"}"#))
        .await;
    assert_eq!(w.status, 200);
    assert_eq!(
        n.get(&holder, &[]).await.x_cache(),
        "MISS",
        "names the block"
    );
    assert_eq!(n.get(&block, &[]).await.x_cache(), "MISS");
    assert_eq!(
        n.get(&ctx, &[]).await.x_cache(),
        "MISS",
        "agent view of unknown blocks"
    );
    assert_eq!(
        n.get(&bystander, &[]).await.x_cache(),
        "HIT",
        "other blocks untouched"
    );
}

#[tokio::test]
async fn a_turn_drops_the_views_of_the_agents_blocks() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    // Reading the agent's core memory teaches the proxy which blocks it has.
    let memory = format!("/v1/agents/{A}/core-memory?blocks={B}");
    let own_block = format!("/v1/blocks/{B}");
    let other_block = format!("/v1/blocks/{B2}");
    for p in [&memory, &own_block, &other_block] {
        n.get(p, &[]).await;
    }
    n.send(
        Method::POST,
        &format!("/v1/agents/{A}/messages"),
        &[],
        Some("{}"),
    )
    .await;
    assert_eq!(
        n.get(&own_block, &[]).await.x_cache(),
        "MISS",
        "the turn may edit it"
    );
    assert_eq!(
        n.get(&other_block, &[]).await.x_cache(),
        "HIT",
        "known not to be A's"
    );
    // A turn of an agent whose blocks are unknown drops every block view.
    n.send(
        Method::POST,
        &format!("/v1/agents/{A2}/messages"),
        &[],
        Some("{}"),
    )
    .await;
    assert_eq!(n.get(&other_block, &[]).await.x_cache(), "MISS");
}

#[tokio::test]
async fn a_read_overtaken_by_a_write_is_not_stored() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let slow = format!("/v1/agents/{A}?delay_ms=400");
    let reader = {
        let url = n.url(&slow);
        tokio::spawn(async move { client().get(url).send().await.unwrap().text().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let w = n
        .send(Method::PATCH, &format!("/v1/agents/{A}"), &[], Some("{}"))
        .await;
    assert_eq!(w.status, 200);
    reader.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // the fill's store task
    assert_eq!(
        n.get(&slow, &[]).await.x_cache(),
        "MISS",
        "the older answer was not kept"
    );
}

#[tokio::test]
async fn reads_during_a_streamed_turn_are_not_stored_and_the_end_invalidates() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let agent = format!("/v1/agents/{A}");
    let turn = client()
        .post(n.url(&format!("{agent}/messages/stream?events=3&interval_ms=200")))
        .body("{}")
        .send()
        .await
        .unwrap();
    let mut events = turn.bytes_stream();
    events.next().await.unwrap().unwrap();
    assert_eq!(n.get(&agent, &[]).await.x_cache(), "MISS");
    assert_eq!(
        n.get(&agent, &[]).await.x_cache(),
        "MISS",
        "mid-turn answer not kept"
    );
    while events.next().await.is_some() {}
    until(
        Duration::from_secs(2),
        "the turn's hold released",
        || async { n.get(&agent, &[]).await.x_cache() == "HIT" },
    )
    .await;
}

#[tokio::test]
async fn identical_block_writes_are_suppressed_until_something_changes() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "suppress_unchanged_writes = true")).await;
    let block = format!("/v1/blocks/{B}");
    let alice = [("authorization", "Bearer alice")];
    let patch = |body: &'static str| n.send(Method::PATCH, &block, &alice, Some(body));
    let first = patch(r#"{"value":"x"}"#).await;
    assert!(!first.headers.contains_key("x-letta-proxy-suppressed"));
    let same = patch(r#"{"value":"x"}"#).await;
    assert_eq!(same.headers["x-letta-proxy-suppressed"], "1");
    assert_eq!(
        (same.status, same.seq()),
        (200, first.seq()),
        "the remembered answer"
    );
    assert_eq!(calls(&s[0], &block), 1);
    // Another caller's identical write is its own.
    n.send(Method::PATCH, &block, &[], Some(r#"{"value":"x"}"#))
        .await;
    assert_eq!(calls(&s[0], &block), 2);
    // A different body goes through, then is remembered in its turn.
    patch(r#"{"value":"y"}"#).await;
    assert_eq!(calls(&s[0], &block), 3);
    assert!(patch(r#"{"value":"y"}"#)
        .await
        .headers
        .contains_key("x-letta-proxy-suppressed"));
    // A turn of an agent (whose blocks are unknown) may have edited the block.
    n.send(
        Method::POST,
        &format!("/v1/agents/{A}/messages"),
        &[],
        Some("{}"),
    )
    .await;
    patch(r#"{"value":"y"}"#).await;
    assert_eq!(calls(&s[0], &block), 4, "forgotten after the turn");
    // Core-memory writes by label, forgotten by a write to their agent.
    let label = format!("/v1/agents/{A2}/core-memory/blocks/human");
    let body = r#"{"value":"Ada"}"#;
    n.send(Method::PATCH, &label, &alice, Some(body)).await;
    let r = n.send(Method::PATCH, &label, &alice, Some(body)).await;
    assert!(r.headers.contains_key("x-letta-proxy-suppressed"));
    n.send(Method::PATCH, &format!("/v1/agents/{A2}"), &[], Some("{}"))
        .await;
    n.send(Method::PATCH, &label, &alice, Some(body)).await;
    assert_eq!(calls(&s[0], &label), 2);
    let suppressed = n.metric("letta_proxy_cache_suppressed_writes_total").await;
    assert_eq!(suppressed, 3.0);
}

#[tokio::test]
async fn suppression_is_off_by_default() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let block = format!("/v1/blocks/{B}");
    for _ in 0..2 {
        n.send(Method::PATCH, &block, &[], Some(r#"{"value":"x"}"#))
            .await;
    }
    assert_eq!(calls(&s[0], &block), 2);
}

#[tokio::test]
async fn the_message_cache_is_opt_in_and_keyed_by_body() {
    let s = standins(1).await;
    let turn = format!("/v1/agents/{A}/messages");
    async fn send(n: &Node, body: &'static str) -> Answer {
        n.send(
            Method::POST,
            &format!("/v1/agents/{A}/messages"),
            &[],
            Some(body),
        )
        .await
    }
    let off = Node::start(cache_config(&[&s[0]], "")).await;
    send(&off, r#"{"q":1}"#).await;
    send(&off, r#"{"q":1}"#).await;
    assert_eq!(calls(&s[0], &turn), 2, "turns are never cached by default");

    let rule =
        "[[cache.rules]]\npath = \"/v1/agents/*/messages\"\nmethods = [\"POST\"]\nttl = \"60s\"";
    let on = Node::start(cache_config(&[&s[0]], rule)).await;
    assert_eq!(send(&on, r#"{"q":1}"#).await.x_cache(), "MISS");
    let again = send(&on, r#"{"q":1}"#).await;
    assert_eq!(again.x_cache(), "HIT");
    assert_eq!(calls(&s[0], &turn), 3);
    assert_eq!(
        send(&on, r#"{"q":2}"#).await.x_cache(),
        "MISS",
        "another question"
    );
    assert_eq!(
        send(&on, r#"{"q":1}"#).await.x_cache(),
        "HIT",
        "turns do not evict turns"
    );
    // Changing the agent does.
    on.send(Method::PATCH, &format!("/v1/agents/{A}"), &[], Some("{}"))
        .await;
    assert_eq!(send(&on, r#"{"q":1}"#).await.x_cache(), "MISS");
}
