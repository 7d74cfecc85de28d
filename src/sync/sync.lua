-- quotad's sync script: applies one node's pending delta to one cell's
-- global state and returns that state, atomically.
--   KEYS[1]  the cell's key
--   ARGV[1]  'b' (token bucket) or 'c' (window counter)
-- bucket:  ARGV[2] now (microseconds), ARGV[3] delta (microseconds of
--          arrival time; negative gives back), ARGV[4] since (microseconds:
--          when the oldest charge in the delta was made).
--          The value is the bucket's theoretical arrival time in
--          microseconds. The delta is applied from `since` on, as if spent
--          over that span, so a backlog sent after an outage counts as the
--          traffic it was, not as a burst now; the key expires when the
--          bucket is full again. Returns the arrival time.
-- counter: ARGV[2] time to live (ms: the window's rest, plus slack),
--          ARGV[3] delta (units).
--          Returns the count.
if ARGV[1] == 'b' then
  local now = tonumber(ARGV[2])
  local since = tonumber(ARGV[4])
  if since > now then since = now end
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
  if tat < since then tat = since end
  tat = tat + tonumber(ARGV[3])
  if tat <= now then
    redis.call('DEL', KEYS[1])
    return now
  end
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  return tat
end
local used = redis.call('INCRBY', KEYS[1], ARGV[3])
if used <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return used
