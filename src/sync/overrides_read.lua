-- Everything operators set, read atomically with its version and digest.
--
-- KEYS[1]: the overrides hash, KEYS[2]: the resets hash,
-- KEYS[3]: the version counter, KEYS[4]: the history digest.
-- Returns { version, digest, { field, value, ... }, { field, value, ... } }.
local version = tonumber(redis.call('GET', KEYS[3]) or '0')
local digest = redis.call('GET', KEYS[4]) or ''
return { version, digest, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]) }
