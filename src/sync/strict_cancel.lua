-- Gives up a strict check whose answer was lost (Redis killed or the
-- connection dropped after the check was sent): if Redis charged it, its
-- charge is given back; either way its marker is set to 'x', so a check
-- still on its way is not charged when it arrives. The check is then not
-- charged in Redis, whatever the fail mode answered.
--   KEYS[i]  the cells of the check, then its marker (as in strict.lua)
--   ARGV[1]  now (µs)        ARGV[2]  cost (units)
--   ARGV[3]  how long the marker lives (ms)   ARGV[4]  the mode (unused)
--   then per limit, 3 values as in strict.lua ('b', emission, tau or
--   'c', quota, time to live)
-- Returns 1 when a charge was given back, 0 when there was none.
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local n = #KEYS - 1
local marker = KEYS[n + 1]
local was = redis.call('GET', marker)
redis.call('SET', marker, 'x', 'PX', ARGV[3])
if was ~= 'c' then
  return 0
end
for i = 1, n do
  local base = 5 + (i - 1) * 3
  if ARGV[base] == 'b' then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
    tat = tat - tonumber(ARGV[base + 1])
    if tat <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
    end
  else
    local used = redis.call('DECRBY', KEYS[i], cost)
    if used <= 0 then redis.call('DEL', KEYS[i]) end
  end
end
return 1
