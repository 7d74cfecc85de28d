-- Envoy RLQS demand across nodes: one call per global bucket.
-- KEYS[1]: the bucket's hash of node demands.
-- ARGV: node id, measured demand (requests/s, text), reporters, fresh
--       reporters, reserved rate (per second, text: what Envoys whose
--       streams closed still hold), staleness (ms), time to live of the
--       hash (ms).
-- Writes this node's demand (deletes it when it has no reporters and
-- nothing reserved), drops other nodes' entries older than the staleness
-- (a node that stopped or died), and returns the other nodes' sums:
-- { measured (text), reporters, fresh, reserved (text) }.
local key, me = KEYS[1], ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[6])
if tonumber(ARGV[3]) + tonumber(ARGV[4]) > 0 or tonumber(ARGV[5]) > 0 then
  redis.call('HSET', key, me, ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. now)
  redis.call('PEXPIRE', key, ARGV[7])
else
  redis.call('HDEL', key, me)
end
local all = redis.call('HGETALL', key)
local measured, reporters, fresh, reserved = 0, 0, 0, 0
for i = 1, #all, 2 do
  if all[i] ~= me then
    local d, r, f, h, at = string.match(all[i + 1], '^(%S+) (%d+) (%d+) (%S+) (%d+)$')
    if at and now - tonumber(at) <= stale then
      measured = measured + (tonumber(d) or 0)
      reporters = reporters + tonumber(r)
      fresh = fresh + tonumber(f)
      reserved = reserved + (tonumber(h) or 0)
    else
      redis.call('HDEL', key, all[i])
    end
  end
end
return { tostring(measured), reporters, fresh, tostring(reserved) }
