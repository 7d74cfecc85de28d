-- quotad's sync script: applies one call of a node's pending deltas (one
-- per cell, hundreds per call) to the cells' global states and returns
-- them, atomically, at most once per call.
--   KEYS[1]     the call's marker: "<prefix>{<tag>}r:<node>:<seq>", in the
--               same Cluster slot as the cells (the first cell's tag)
--   KEYS[2..]   the cells' keys
--   ARGV[1]     how long the marker lives (ms)
--   ARGV[2]     now (microseconds, the node's clock)
--   per cell i (from 1): ARGV[3i], ARGV[3i+1], ARGV[3i+2]:
--     'b', delta (µs of arrival time; negative gives back), since (µs:
--          when the oldest charge in the delta was made)   token bucket
--     'c', time to live (ms: the window's rest plus its slack), delta
--          (units)                                           window counter
-- A call whose marker exists was applied before (its answer was lost and
-- the node sent it again): nothing is applied, the states are only read.
-- Buckets are kept as their theoretical arrival time in µs; a delta is
-- applied as if spent from `since` on, so a backlog sent after an outage
-- counts as the traffic it was, not as a burst now; the key expires when
-- the bucket is full again. Counters are counts.
-- Returns { 1 if applied (0 if a repeat), state of cell 1, ... }: each
-- state an integer (arrival time, or count), or the error text for a cell
-- whose key Redis cannot use (another type under our prefix).
local fresh = redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1])
local now = tonumber(ARGV[2])
local out = { fresh and 1 or 0 }

local function bucket(key, delta, since)
  local stored = redis.call('GET', key)
  local tat = tonumber(stored or '0') or 0
  if not fresh then
    if tat < now then tat = now end
    return tat
  end
  if since > now then since = now end
  if tat < since then tat = since end
  tat = tat + delta
  if tat <= now then
    -- Full again: nothing to keep. Most cells of a big burst never
    -- leave full, so their key is not there to delete.
    if stored then redis.call('DEL', key) end
    return now
  end
  redis.call('SET', key, string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  return tat
end

local function counter(key, ttl, delta)
  if not fresh then
    return tonumber(redis.call('GET', key) or '0') or 0
  end
  local used = redis.call('INCRBY', key, delta)
  if used <= 0 then
    redis.call('DEL', key)
    return 0
  end
  redis.call('PEXPIRE', key, ttl)
  return used
end

for i = 1, #KEYS - 1 do
  local kind = ARGV[3 * i]
  local a = tonumber(ARGV[3 * i + 1])
  local b = tonumber(ARGV[3 * i + 2])
  local ok, state
  if kind == 'b' then
    ok, state = pcall(bucket, KEYS[i + 1], a, b)
  else
    ok, state = pcall(counter, KEYS[i + 1], a, b)
  end
  if ok then
    out[i + 1] = state
  else
    local e = state
    if type(e) == 'table' then e = e.err end
    out[i + 1] = 'E ' .. tostring(e)
  end
end
return out
