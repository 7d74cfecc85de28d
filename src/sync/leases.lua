-- quotad's lease script (issue 21, concurrency limits; not wired to a door
-- yet): the leases of one (concurrency limit, key) cell across every node,
-- pruned, counted and changed in one atomic step.
--   KEYS[1]  the cell's lease set: "<prefix>{<tag>}l:<cell>", a sorted set
--            of members "<slots>:<secret>" scored by expiry (ms, the
--            nodes' clock)
--   ARGV[1]  'a' acquire, 'r' renew, 'x' release, 'n' count
--   ARGV[2]  now (ms)
--   acquire: ARGV[3] limit, ARGV[4] slots, ARGV[5] ttl (ms), ARGV[6] secret
--            -> { 1, in use after, expiry, pruned }   granted
--               { 0, in use, wait (ms), pruned }      denied: wait is how
--               long until enough leases expire, if none is released
--   renew:   ARGV[3] slots, ARGV[4] secret, ARGV[5] ttl (ms)
--            -> { 1, expiry } or { 0 } when the lease is gone
--   release: ARGV[3] slots, ARGV[4] secret -> number of leases removed
--   count:   -> { in use, pruned }
-- Expired leases are pruned first and their number returned (leases that
-- timed out instead of being released). The set expires with its last
-- lease, so a node that dies leaves nothing behind longer than a TTL.
local key = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local pruned = redis.call('ZREMRANGEBYSCORE', key, '-inf', now)

local function in_use()
  local n = 0
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    n = n + tonumber(string.match(m, '^(%d+):'))
  end
  return n
end

-- A time to live, not an instant: only the nodes' clock is involved, so
-- an offset between it and Redis's cannot drop leases early.
local function keep_until_last()
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', key, math.floor(tonumber(last[2]) - now) + 1)
  end
end

if op == 'a' then
  local limit, slots, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local used = in_use()
  if used + slots > limit then
    local need, freed, wait = used + slots - limit, 0, 0
    local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    for i = 1, #all, 2 do
      freed = freed + tonumber(string.match(all[i], '^(%d+):'))
      if freed >= need then
        wait = tonumber(all[i + 1]) - now
        break
      end
    end
    return { 0, used, wait, pruned }
  end
  local expiry = now + ttl
  redis.call('ZADD', key, expiry, slots .. ':' .. ARGV[6])
  keep_until_last()
  return { 1, used + slots, expiry, pruned }
elseif op == 'r' then
  local member = ARGV[3] .. ':' .. ARGV[4]
  if not redis.call('ZSCORE', key, member) then
    return { 0 }
  end
  local expiry = now + tonumber(ARGV[5])
  redis.call('ZADD', key, 'XX', expiry, member)
  keep_until_last()
  return { 1, expiry }
elseif op == 'x' then
  local removed = redis.call('ZREM', key, ARGV[3] .. ':' .. ARGV[4])
  if redis.call('ZCARD', key) == 0 then
    redis.call('DEL', key)
  end
  return removed
elseif op == 'n' then
  return { in_use(), pruned }
end
return redis.error_reply('unknown lease operation')
