-- Everything operators set, read atomically with its version.
--
-- KEYS[1]: the overrides hash, KEYS[2]: the resets hash,
-- KEYS[3]: the version counter.
-- Returns { version, { field, value, ... }, { field, value, ... } }.
local version = tonumber(redis.call('GET', KEYS[3]) or '0')
return { version, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]) }
