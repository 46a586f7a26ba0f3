-- Admit jobs atomically: the pending cap, duplicate ids (unfinished, or finished within the dedupe
-- window), then XADD (or ZADD for run_at in the future) and the pending counter.
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] pending counter, KEYS[4..] one job hash per job
-- ARGV[1] max_pending_jobs, ARGV[2] dedupe window (ms), then per job: id, data, run_at_ms or "",
--   max_attempts
-- Returns {"ok"} | {"full", pending} | {"dup", job_id}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = #KEYS - 3
local pending = tonumber(redis.call('GET', KEYS[3]) or '0')
if pending + n > cap then
  return {'full', pending}
end
local seen, stale = {}, {}
for i = 1, n do
  local id = ARGV[2 + (i - 1) * 4 + 1]
  if seen[id] then
    return {'dup', id}  -- repeated within the batch
  end
  seen[id] = true
  local state = redis.call('HGET', KEYS[3 + i], 'state')
  if state then
    stale[i] = true
    if state ~= 'succeeded' and state ~= 'failed' then
      return {'dup', id}
    end
    local finished = tonumber(redis.call('HGET', KEYS[3 + i], 'finished_at') or '0')
    if finished + window > now then
      return {'dup', id}
    end
  end
end
for i = 1, n do
  local base = 2 + (i - 1) * 4
  local id, data, run_at, max = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local key = KEYS[3 + i]
  if stale[i] then  -- the record of a finished job whose dedupe window is over
    redis.call('DEL', key)
  end
  if run_at ~= '' and tonumber(run_at) > now then
    redis.call('HSET', key, 'state', 'scheduled', 'attempts', 0, 'max', max, 'data', data,
      'enqueued_at', now, 'run_at', run_at)
    redis.call('ZADD', KEYS[2], tonumber(run_at), id)
  else
    redis.call('XADD', KEYS[1], '*', 'id', id, 'd', data)
    redis.call('HSET', key, 'state', 'queued', 'attempts', 0, 'max', max, 'data', data,
      'enqueued_at', now)
  end
end
redis.call('INCRBY', KEYS[3], n)
return {'ok'}
