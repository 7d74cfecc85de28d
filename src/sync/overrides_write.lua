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
-- ARGV[5]: now (Unix ns, as a decimal string), to tell ended overrides
--
-- Stores "<version>|<value>" and publishes
-- "<version>|<previous digest>|<digest>|<field>|<value>". The digest
-- chains every change (SHA-1 of the previous digest and this change), so
-- two histories that reached the same version by different changes (a
-- failover to a replica that lagged, a Redis that started over) are told
-- apart, and a node applies an announcement only on the history it has.
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
    -- At the cap: overrides that ended no longer count. Every node
    -- ignores them already, so they go without an announcement.
    -- (Lua numbers are doubles: exact to a quarter of a microsecond here.)
    local now = tonumber(ARGV[5])
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
      local bar = string.find(all[i + 1], '|', 1, true)
      local ok, record = pcall(cjson.decode, string.sub(all[i + 1], (bar or 0) + 1))
      local ends = ok and type(record) == 'table' and record['expires_at_ns']
      if type(ends) == 'number' and ends <= now then
        redis.call('HDEL', KEYS[1], all[i])
      end
    end
    if redis.call('HLEN', KEYS[1]) >= max then
      return redis.error_reply('QUOTAD_FULL ' .. max .. ' are in force (admin.max_overrides)')
    end
  end
end
local version = redis.call('INCR', KEYS[2])
local change = version .. '|' .. ARGV[1] .. '|' .. ARGV[2]
local previous = redis.call('GET', KEYS[3]) or ''
local digest = redis.sha1hex(previous .. '|' .. change)
redis.call('SET', KEYS[3], digest)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], version .. '|' .. ARGV[2])
end
redis.call('PUBLISH', ARGV[3], version .. '|' .. previous .. '|' .. digest .. '|' .. ARGV[1] .. '|' .. ARGV[2])
return { version, digest, old }
