-- Deletes records that still hold the value they were read with (ended
-- overrides, old resets), leaving any that changed since alone.
--
-- KEYS[1]: the hash; ARGV: field, value, field, value, ...
-- Returns how many were deleted.
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
