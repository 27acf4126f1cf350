//! The shared tier's Lua scripts, run with `redis::Script` (by SHA; loaded
//! again when Redis answers NOSCRIPT after a restart or a failover).
//!
//! Every script declares one key, `P epoch` (P = `{prefix}:`), and computes the
//! others from `P`: a tag set names entries, so the keys cannot all be known
//! in advance. The declared key routes the call to the node owning the
//! `{prefix}` hash tag in a Redis Cluster, and every computed key carries the
//! same tag, so a script never leaves its slot.
//!
//! `STORE` refuses an entry one of whose tags was invalidated after the fill
//! began (or after a flush), else stores it, indexes it under its tags and
//! records what it teaches about an agent's blocks. `INVALIDATE` bumps the
//! epoch, expands agents with the blocks Redis knows (or the every-block
//! fallback), deletes every indexed entry, records each tag's invalidation
//! epoch, forgets agents' blocks and publishes the result to every instance.
//! `FLUSH` marks everything invalid and tells every instance. Both publish with
//! the command they are given (`PUBLISH` standalone, `SPUBLISH` on a cluster).

pub(super) const STORE: &str = r#"
local p, start, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[7])
local flushed = redis.call('GET', p .. 'flushed')
if flushed and tonumber(flushed) > start then return 0 end
for i = 8, 7 + n do
  local inv = redis.call('GET', p .. 'inv:' .. ARGV[i])
  if inv and tonumber(inv) > start then return 0 end
end
redis.call('SET', p .. 'e:' .. ARGV[5], ARGV[4], 'PX', ARGV[3])
for i = 8, 7 + n do
  local t = p .. 't:' .. ARGV[i]
  redis.call('SADD', t, ARGV[5])
  redis.call('PEXPIRE', t, ARGV[6])
end
local agent = ARGV[8 + n]
if agent ~= '' then
  local r = p .. 'rel:' .. agent
  redis.call('DEL', r)
  redis.call('SADD', r, '.')
  for i = 10 + n, #ARGV do redis.call('SADD', r, ARGV[i]) end
  redis.call('PEXPIRE', r, ARGV[9 + n])
end
return 1
"#;

pub(super) const INVALIDATE: &str = r#"
local p = ARGV[1]
local e = redis.call('INCR', KEYS[1])
local tags, forget = {}, {}
local i = 7
for _ = 1, tonumber(ARGV[6]) do tags[#tags + 1] = ARGV[i]; i = i + 1 end
local ne = tonumber(ARGV[i]); i = i + 1
for _ = 1, ne do
  local blocks = redis.call('SMEMBERS', p .. 'rel:' .. ARGV[i])
  if #blocks == 0 then tags[#tags + 1] = ARGV[#ARGV] end
  for _, b in ipairs(blocks) do if b ~= '.' then tags[#tags + 1] = b end end
  i = i + 1
end
local nf = tonumber(ARGV[i]); i = i + 1
for _ = 1, nf do
  forget[#forget + 1] = ARGV[i]
  redis.call('DEL', p .. 'rel:' .. ARGV[i])
  i = i + 1
end
local deleted = 0
for _, t in ipairs(tags) do
  local set = p .. 't:' .. t
  for _, k in ipairs(redis.call('SMEMBERS', set)) do
    deleted = deleted + redis.call('DEL', p .. 'e:' .. k)
  end
  redis.call('DEL', set)
  redis.call('SET', p .. 'inv:' .. t, e, 'PX', ARGV[2])
end
local msg = ARGV[4] .. '\n' .. table.concat(tags, '\n')
for _, a in ipairs(forget) do msg = msg .. '\n-' .. a end
redis.call(ARGV[5], ARGV[3], msg)
return deleted
"#;

pub(super) const FLUSH: &str = r#"
local p = ARGV[1]
local e = redis.call('INCR', KEYS[1])
redis.call('SET', p .. 'flushed', e)
redis.call(ARGV[4], ARGV[2], ARGV[3] .. '\n*')
return e
"#;
