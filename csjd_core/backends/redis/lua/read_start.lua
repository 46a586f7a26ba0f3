-- Read new entries for this consumer and record the start of their attempts in one atomic step:
-- no other consumer can claim an entry between the read and the start, so no fence is needed,
-- and an entry read with '>' has been delivered exactly once (its fencing token is 1).
-- Non-blocking: the reader falls back to a blocking XREADGROUP when this returns nothing.
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] job hash key prefix, ARGV[4] count
-- Returns a flat list, per entry: entry id, job id, data, attempts (-1: no job record, -2: an
-- entry without id or data; both are poison for the caller to dead-letter).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, consumer, prefix = ARGV[1], ARGV[2], ARGV[3]
local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', tonumber(ARGV[4]),
  'STREAMS', KEYS[1], '>')
local out = {}
if not r then
  return out
end
for _, e in ipairs(r[1][2]) do
  local f = e[2]
  local id, data = false, false
  for j = 1, #f, 2 do
    if f[j] == 'id' then id = f[j + 1] elseif f[j] == 'd' then data = f[j + 1] end
  end
  local attempts = -2
  if id and data and id ~= '' then
    local key = prefix .. id
    -- Every job record has a state: three new fields mean there was no record (poison).
    if redis.call('HSET', key, 'state', 'running', 'started_at', now, 'worker', consumer) == 3 then
      redis.call('DEL', key)
      attempts = -1
    else
      attempts = redis.call('HINCRBY', key, 'attempts', 1)
    end
  end
  out[#out + 1] = e[1]
  out[#out + 1] = id or ''
  out[#out + 1] = data or ''
  out[#out + 1] = attempts
end
return out
