-- quotad's strict-mode script: checks every limit of one plan for one key
-- and charges all of them or none, atomically.
--   KEYS[i]  the cell of limit i (same names and formats as sync.lua)
--   ARGV[1]  now (µs)        ARGV[2]  cost (units; 0 only reports)
--   then per limit, 3 values: 'b', emission (µs), tau (µs)  -- token bucket
--                          or 'c', quota, time to live (ms) -- window counter
-- Returns {ok, state_1, ..., state_n}: ok is 1 when charged (or when a
-- report found room), each state the cell's value before this check
-- (a bucket's arrival time in µs, a counter's count).
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local n = #KEYS
local before = {}
local ok = true
for i = 1, n do
  local base = 3 + (i - 1) * 3
  local v = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  before[i] = v
  if ARGV[base] == 'b' then
    local tat = v
    if tat < now then tat = now end
    if cost > 0 and tat + tonumber(ARGV[base + 1]) - now > tonumber(ARGV[base + 2]) then
      ok = false
    end
  else
    if cost > 0 and v + cost > tonumber(ARGV[base + 1]) then ok = false end
  end
end
if ok and cost > 0 then
  for i = 1, n do
    local base = 3 + (i - 1) * 3
    if ARGV[base] == 'b' then
      local tat = before[i]
      if tat < now then tat = now end
      tat = tat + tonumber(ARGV[base + 1])
      redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
    else
      redis.call('INCRBY', KEYS[i], cost)
      redis.call('PEXPIRE', KEYS[i], ARGV[base + 2])
    end
  end
end
local out = { ok and 1 or 0 }
for i = 1, n do out[i + 1] = before[i] end
return out
