//! The Lua scripts of leases and of the registry. Each declares every key it
//! touches, and those keys share one hash tag (`{prefix:lease:<key>}`,
//! `{prefix:instances}`), so each runs on one Redis Cluster slot. Times come
//! from the server's clock (`TIME`), the one clock every instance shares.

/// Joins the queue (first call) or polls it, and takes the lease when the
/// caller is first in line and nobody holds it.
///
/// KEYS: 1 holder (hash: `w` waiter, `t` token), 2 queue (zset waiter →
/// ticket), 3 liveness (zset waiter → deadline in ms), 4 ticket counter.
/// ARGV: 1 waiter id, 2 lease ttl in ms.
/// Returns `{1, token, 0}` when granted, `{0, ticket, holder's ms left}` when
/// queued.
pub const ACQUIRE: &str = r#"
local me, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('ZREM', KEYS[2], w)
  redis.call('ZREM', KEYS[3], w)
end
local holder = redis.call('HGET', KEYS[1], 'w')
if holder == me then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, tonumber(redis.call('HGET', KEYS[1], 't')), 0}
end
local ticket = redis.call('ZSCORE', KEYS[2], me)
if ticket then
  ticket = tonumber(ticket)
else
  ticket = redis.call('INCR', KEYS[4])
  if ticket == 1 then
    -- A new counter starts at the server clock in microseconds, so tokens keep
    -- increasing after an idle counter expired.
    ticket = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', KEYS[4], string.format('%d', ticket))
  end
  redis.call('ZADD', KEYS[2], string.format('%d', ticket), me)
end
redis.call('PEXPIRE', KEYS[4], 86400000)
if not holder and redis.call('ZRANGE', KEYS[2], 0, 0)[1] == me then
  redis.call('ZREM', KEYS[2], me)
  redis.call('ZREM', KEYS[3], me)
  redis.call('HSET', KEYS[1], 'w', me, 't', string.format('%d', ticket))
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, ticket, 0}
end
redis.call('ZADD', KEYS[3], now + ttl, me)
redis.call('PEXPIRE', KEYS[2], ttl * 3)
redis.call('PEXPIRE', KEYS[3], ttl * 3)
local left = 0
if holder then left = redis.call('PTTL', KEYS[1]) end
return {0, ticket, left}
"#;

/// Gives the lease back (or leaves the queue), and names the waiter to wake.
///
/// KEYS: as [`ACQUIRE`] (1-3). ARGV: 1 waiter id.
/// Returns `{released}` or `{released, next waiter}` when the lease is free
/// and someone (alive) waits for it.
pub const RELEASE: &str = r#"
local me = ARGV[1]
local released = 0
if redis.call('HGET', KEYS[1], 'w') == me then
  redis.call('DEL', KEYS[1])
  released = 1
else
  redis.call('ZREM', KEYS[2], me)
  redis.call('ZREM', KEYS[3], me)
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
    redis.call('ZREM', KEYS[2], w)
    redis.call('ZREM', KEYS[3], w)
  end
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if head then return {released, head} end
end
return {released}
"#;

/// Extends the lease if the caller still holds it.
///
/// KEYS: 1 holder. ARGV: 1 waiter id, 2 ttl in ms. Returns 1, or 0 when lost.
pub const RENEW: &str = r#"
if redis.call('HGET', KEYS[1], 'w') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// One heartbeat: drops instances past their deadline, renews the caller's,
/// returns every live instance with its description (callers sort them).
///
/// KEYS: 1 live (zset id → deadline in ms), 2 info (hash id → JSON).
/// ARGV: 1 id, 2 JSON, 3 dead-after in ms.
/// Returns `{id1, json1, id2, json2, …}`.
pub const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local after = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + after, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], after * 10)
redis.call('PEXPIRE', KEYS[2], after * 10)
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
"#;

/// Leaves the registry (clean shutdown). KEYS as [`HEARTBEAT`]; ARGV: 1 id.
pub const DEREGISTER: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;
