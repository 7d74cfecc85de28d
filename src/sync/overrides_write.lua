-- One versioned change to operators' state (an override or a reset),
-- applied atomically: the record, the version counter, the announcement.
--
-- KEYS[1]: the hash the record lives in (overrides or resets)
-- KEYS[2]: the version counter
-- ARGV[1]: the record's field ("o:<key hash>" or "r:<key hash>")
-- ARGV[2]: its new value ("" deletes it)
-- ARGV[3]: the channel to announce it on
-- ARGV[4]: most records KEYS[1] may hold (0: no cap)
--
-- Stores "<version>|<value>" and publishes "<version>|<field>|<value>".
-- Returns { version, old stored value or false }; { 0, false } when
-- deleting a record that does not exist (nothing changes, nothing is
-- announced).
local old = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  if not old then
    return { 0, false }
  end
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  local max = tonumber(ARGV[4])
  if not old and max > 0 and redis.call('HLEN', KEYS[1]) >= max then
    return redis.error_reply('QUOTAD_FULL ' .. max .. ' overrides are in force (admin.max_overrides)')
  end
end
local version = redis.call('INCR', KEYS[2])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], version .. '|' .. ARGV[2])
end
redis.call('PUBLISH', ARGV[3], version .. '|' .. ARGV[1] .. '|' .. ARGV[2])
return { version, old }
