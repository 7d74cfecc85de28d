-- One versioned change to operators' state (an override or a reset),
-- applied atomically: the record, the version, the history digest, the
-- announcement.
--
-- KEYS[1]: the hash the record lives in (overrides or resets)
-- KEYS[2]: the version counter
-- KEYS[3]: the history digest
-- ARGV[1]: the record's field ("o:<key hash>" or "r:<key hash>")
-- ARGV[2]: its new value ("" deletes it)
-- ARGV[3]: the channel to announce it on
-- ARGV[4]: most records KEYS[1] may hold (0: no cap)
--
-- Stores "<version>|<value>" and publishes
-- "<version>|<digest>|<field>|<value>". The digest chains every change
-- (SHA-1 of the previous digest and this change), so two histories that
-- reached the same version by different changes (a failover to a replica
-- that lagged, a Redis that started over) are told apart.
-- Returns { version, digest, old stored value or false }; { 0, '', false }
-- when deleting a record that does not exist (nothing changes, nothing is
-- announced).
local old = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  if not old then
    return { 0, '', false }
  end
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  local max = tonumber(ARGV[4])
  if not old and max > 0 and redis.call('HLEN', KEYS[1]) >= max then
    return redis.error_reply('QUOTAD_FULL ' .. max .. ' overrides are in force (admin.max_overrides)')
  end
end
local version = redis.call('INCR', KEYS[2])
local change = version .. '|' .. ARGV[1] .. '|' .. ARGV[2]
local digest = redis.sha1hex((redis.call('GET', KEYS[3]) or '') .. '|' .. change)
redis.call('SET', KEYS[3], digest)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], version .. '|' .. ARGV[2])
end
redis.call('PUBLISH', ARGV[3], version .. '|' .. digest .. '|' .. ARGV[1] .. '|' .. ARGV[2])
return { version, digest, old }
