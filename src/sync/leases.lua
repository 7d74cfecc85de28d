-- quotad's lease script (concurrency limits): the leases of one
-- (concurrency limit, key) cell across every node, pruned, counted and
-- changed in one atomic step.
--   KEYS[1]  the cell's leases: "<prefix>{<cell>}l", a sorted set of
--            secrets scored by expiry (ms, the nodes' clock)
--   KEYS[2]  the cell's lease details: "<prefix>{<cell>}lh", a hash of
--            secret -> "<slots>:<ttl ms>", and "#" -> slots in use
--   KEYS[3]  the cell's reset mark: "<prefix>{<cell>}lr", the time an
--            operator freed its leases, kept for an hour (the longest lease)
--   KEYS[4]  the cell's released leases: "<prefix>{<cell>}lx", a sorted set
--            of secrets released within the hour, scored by when
--   ARGV[1]  'a' acquire, 's' restore, 'r' renew, 'x' release, 'n' count,
--            'd' drop all
--   ARGV[2]  now (ms)
--   acquire: ARGV[3] limit, ARGV[4] slots, ARGV[5] ttl (ms), ARGV[6] secret
--            -> { 1, in use after, expiry, pruned }   granted
--               { 0, in use, wait (ms), pruned }      denied: wait is how
--               long until enough leases expire, if none is released
--            A secret already held is answered as granted again (a
--            command resent after a lost connection takes nothing more).
--   restore: as acquire, ARGV[7] when the lease was granted (ms), for a
--            lease a node still holds that Redis lost (Redis restarted
--            empty, or the lease was granted by a node deciding alone during
--            an outage): put back if its slots are free, it was not
--            released, and no operator freed the cell's leases since it was
--            granted (else { 0, in use, 0, pruned }: the lease stays lost)
--   renew:   ARGV[3] secret, ARGV[4] ttl (ms; 0: the lease's own)
--            -> { 1, expiry, pruned } or { 0, 0, pruned } when it is gone
--   release: ARGV[3] secret -> { number of leases removed, pruned }
--   count:   -> { in use, pruned, slots, expiry, ... } (at most 1000
--            leases, soonest to expire first)
--   drop:    -> { number of leases removed, pruned }
-- Expired leases are pruned first and their number returned (leases that
-- timed out instead of being released). Both keys expire with the last
-- lease, so a node that dies leaves nothing behind longer than a TTL.
-- Every operation but count touches only the leases it names (and those
-- that expired), however large the limit.
local zset, info, mark, released = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local HOUR = 3600000
local op = ARGV[1]
local now = tonumber(ARGV[2])

local function details(secret)
  local d = redis.call('HGET', info, secret)
  if not d then
    -- Details lost (an evicted key): a lease holds a slot at least.
    return 1, 0
  end
  local slots, ttl = string.match(d, '^(%d+):(%d+)$')
  return tonumber(slots), tonumber(ttl)
end

local function forget(secret)
  local slots = details(secret)
  redis.call('HDEL', info, secret)
  if redis.call('HINCRBY', info, '#', -slots) < 0 then
    redis.call('HSET', info, '#', 0)
  end
end

local function prune()
  local gone = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  for _, secret in ipairs(gone) do
    forget(secret)
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', zset, '-inf', now)
  end
  return #gone
end

local function in_use()
  return tonumber(redis.call('HGET', info, '#') or '0')
end

-- Both keys live until the last lease expires, or go with it. A time to
-- live, not an instant: only the nodes' clock is involved, so an offset
-- between it and Redis's cannot drop leases early.
local function keep_until_last()
  local last = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if last[2] then
    local ttl = math.floor(tonumber(last[2]) - now) + 1
    redis.call('PEXPIRE', zset, ttl)
    redis.call('PEXPIRE', info, ttl)
  else
    redis.call('DEL', zset, info)
  end
end

local pruned = prune()

local function acquire(limit, slots, ttl, secret)
  local held = redis.call('ZSCORE', zset, secret)
  if held then
    return { 1, in_use(), tonumber(held), pruned }
  end
  local used = in_use()
  if used + slots > limit then
    -- Each lease holds a slot at least: the first `need` to expire free
    -- enough, if none is released first.
    local need, freed, wait = used + slots - limit, 0, 0
    local first = redis.call('ZRANGE', zset, 0, need - 1, 'WITHSCORES')
    for i = 1, #first, 2 do
      freed = freed + details(first[i])
      if freed >= need then
        wait = tonumber(first[i + 1]) - now
        break
      end
    end
    keep_until_last()
    return { 0, used, wait, pruned }
  end
  local expiry = now + ttl
  redis.call('ZADD', zset, expiry, secret)
  redis.call('HSET', info, secret, slots .. ':' .. ttl)
  redis.call('HINCRBY', info, '#', slots)
  keep_until_last()
  return { 1, used + slots, expiry, pruned }
end

if op == 'a' then
  return acquire(tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
elseif op == 's' then
  local reset = tonumber(redis.call('GET', mark) or '-1')
  if reset >= tonumber(ARGV[7]) or redis.call('ZSCORE', released, ARGV[6]) then
    keep_until_last()
    return { 0, in_use(), 0, pruned }
  end
  return acquire(tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
elseif op == 'r' then
  local secret = ARGV[3]
  if not redis.call('ZSCORE', zset, secret) then
    keep_until_last()
    return { 0, 0, pruned }
  end
  local slots, ttl = details(secret)
  local asked = tonumber(ARGV[4])
  if asked > 0 then
    ttl = asked
    redis.call('HSET', info, secret, slots .. ':' .. ttl)
  end
  local expiry = now + ttl
  redis.call('ZADD', zset, 'XX', expiry, secret)
  keep_until_last()
  return { 1, expiry, pruned }
elseif op == 'x' then
  local removed = redis.call('ZREM', zset, ARGV[3])
  if removed == 1 then
    forget(ARGV[3])
  end
  -- Remembered for the hour, so no node puts it back (only for a cell
  -- with leases: releases of made-up ids leave nothing behind).
  if removed == 1 or redis.call('EXISTS', zset) == 1 then
    redis.call('ZADD', released, now, ARGV[3])
    redis.call('ZREMRANGEBYSCORE', released, '-inf', now - HOUR)
    redis.call('PEXPIRE', released, HOUR)
  end
  keep_until_last()
  return { removed, pruned }
elseif op == 'n' then
  local out = { in_use(), pruned }
  local all = redis.call('ZRANGE', zset, 0, 999, 'WITHSCORES')
  for i = 1, #all, 2 do
    out[#out + 1] = details(all[i])
    out[#out + 1] = tonumber(all[i + 1])
  end
  keep_until_last()
  return out
elseif op == 'd' then
  local n = redis.call('ZCARD', zset)
  redis.call('DEL', zset, info)
  redis.call('SET', mark, now, 'PX', HOUR)
  return { n, pruned }
end
return redis.error_reply('unknown lease operation')
