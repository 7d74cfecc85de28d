-- quotad's strict-mode script: checks every limit of one plan for one key
-- and charges all of them or none, atomically.
--   KEYS[i]  the cell of limit i (same names and formats as sync.lua),
--            then the check's marker ("<prefix>{<tag>}s:<node>:<seq>")
--   ARGV[1]  now (µs)        ARGV[2]  cost (units; 0 only reports)
--   ARGV[3]  how long the marker lives (ms)
--   ARGV[4]  'c' a charge (only if every limit has room), 'p' a peek
--            (answered as a charge would be, nothing written) or 'f' a
--            report (charged whatever the cells hold: debt, overrun)
--   then per limit, 3 values: 'b', emission (µs), tau (µs)  -- token bucket
--                          or 'c', quota, time to live (ms) -- window counter
-- A charge sets the marker to 'c', so the same check sent again is
-- charged once; a check whose marker says 'x' was cancelled (its answer
-- was lost and the node gave it up: strict_cancel.lua) and is not charged.
-- Returns {ok, state_1, ..., state_n}: ok is 1 when charged (or when a
-- peek or a cost of 0 found room), each state the cell's value before
-- this check (a bucket's arrival time in µs, a counter's count).
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local mode = ARGV[4]
local n = #KEYS - 1
local marker = KEYS[n + 1]
local was = redis.call('GET', marker)
if was == 'c' then
  -- Charged before: the same check sent again (its answer was lost, or
  -- its connection died after Redis ran it). Answered as charged, not
  -- charged again; the states as they were before that charge.
  local out = { 1 }
  for i = 1, n do
    local base = 5 + (i - 1) * 3
    local v = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
    if ARGV[base] == 'b' then v = v - tonumber(ARGV[base + 1]) else v = v - cost end
    if v < 0 then v = 0 end
    out[i + 1] = v
  end
  return out
end
local before = {}
-- A cancelled check is answered as not charged, and charges nothing.
local ok = was ~= 'x'
for i = 1, n do
  local base = 5 + (i - 1) * 3
  local v = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  before[i] = v
  -- A cost of 0 only asks: refused while a bucket is in debt or a
  -- counter past its amount (reports put them there).
  if ARGV[base] == 'b' then
    local tat = v
    if tat < now then tat = now end
    if tat + tonumber(ARGV[base + 1]) - now > tonumber(ARGV[base + 2]) then
      ok = false
    end
  else
    if v + cost > tonumber(ARGV[base + 1]) then ok = false end
  end
end
-- A report is charged whatever the cells hold (unless cancelled).
if mode == 'f' then ok = was ~= 'x' end
if ok and cost > 0 and mode ~= 'p' then
  redis.call('SET', marker, 'c', 'PX', ARGV[3])
  for i = 1, n do
    local base = 5 + (i - 1) * 3
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
