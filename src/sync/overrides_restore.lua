-- Writes back the overrides a node holds after Redis lost them (it
-- restarted without persistence, or failed over to a replica that lagged),
-- as changes like any other: each record Redis does not have gets a new
-- version, the history digest, and an announcement, so every node applies
-- it. A record Redis has is left alone: it is an operator's later change
-- (or the same one), and it wins.
--
-- KEYS[1]: the overrides hash, KEYS[2]: the version counter,
-- KEYS[3]: the history digest
-- ARGV[1]: the channel to announce on
-- ARGV[2], ARGV[3]: the version and digest the node read, which must
--                   still be Redis's (else another node or an operator
--                   changed something meanwhile: nothing is written)
-- ARGV[4..]: field, value pairs ("o:<key hash>", JSON record)
--
-- Returns the number of records written back, or -1 when Redis's
-- version or digest changed since the node read them.
local version = tonumber(redis.call('GET', KEYS[2]) or '0')
local digest = redis.call('GET', KEYS[3]) or ''
if version ~= tonumber(ARGV[2]) or digest ~= ARGV[3] then
  return -1
end
local written = 0
for i = 4, #ARGV - 1, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    version = redis.call('INCR', KEYS[2])
    local change = version .. '|' .. ARGV[i] .. '|' .. ARGV[i + 1]
    local previous = redis.call('GET', KEYS[3]) or ''
    local next_digest = redis.sha1hex(previous .. '|' .. change)
    redis.call('SET', KEYS[3], next_digest)
    redis.call('HSET', KEYS[1], ARGV[i], version .. '|' .. ARGV[i + 1])
    redis.call('PUBLISH', ARGV[1], version .. '|' .. previous .. '|' .. next_digest .. '|' .. ARGV[i] .. '|' .. ARGV[i + 1])
    written = written + 1
  end
end
return written
