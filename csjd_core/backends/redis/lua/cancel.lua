-- Cancel one job, atomically against its start and its outcome (settle.lua):
-- a scheduled job (run_at, or waiting for a retry) leaves the delayed set; a queued job whose
-- stream entry no consumer has read yet is acked and deleted; either ends now: its record is
-- 'cancelled' (with the reason in 'cancel'), the pending counter decremented, counted. A job
-- whose entry a consumer holds (running, or read ahead) gets a 'cancel' flag in its record:
-- its consumer's heartbeat reads it (renew.lua) and tells the attempt, start.lua refuses to start
-- it, and settle.lua records 'cancelled' whatever the outcome (never 'succeeded', never a retry);
-- the stats hash's 'flagged' counts the flags set and not yet consumed by those scripts.
-- KEYS[1] the queue's stream, KEYS[2] delayed zset, KEYS[3] pending counter, KEYS[4] stats
--   hash, KEYS[5] the job hash, KEYS[6]... every priority band's stream, highest first (a
--   record of another band than the default names it in 'band': its entry is in that stream)
-- ARGV[1] group, ARGV[2] job id, ARGV[3] reason ('cancelled'), ARGV[4] finished-record TTL (ms),
--   ARGV[5] 'waiting' to end the job only if it waits (the bulk form: a held job is left alone)
-- Returns 'none' (no record), 'ended' (finished already), 'cancelled' (ended now),
--   'requested' (flagged) or, with 'waiting', 'running' (held by a consumer: left alone)
local key = KEYS[5]
local state = redis.call('HGET', key, 'state')
if not state then
  return 'none'
end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  return 'ended'
end
if redis.call('HGET', key, 'cancel') then
  return 'requested'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- End the job now; `data` moves into the record when its entry goes (a compact record).
local function finish(data)
  if data then
    redis.call('HSET', key, 'data', data)
  end
  redis.call('HSET', key, 'state', 'cancelled', 'cancel', ARGV[3], 'finished_at', now)
  redis.call('PEXPIRE', key, tonumber(ARGV[4]))
  redis.call('INCRBY', KEYS[3], -1)
  redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
  return 'cancelled'
end

if redis.call('ZREM', KEYS[2], ARGV[2]) == 1 then
  return finish(nil)  -- a scheduled record holds its data
end
local band = tonumber(redis.call('HGET', key, 'band') or '')
local stream = band and KEYS[5 + band] or KEYS[1]
local entry = redis.call('HGET', key, 'entry')
if not entry and state == 'queued' then
  -- A full-form record (record_format='full', as 0.1.0 wrote it) does not name its entry: find
  -- it in the stream (a scan of the backlog: that form is for the time of an upgrade).
  local from = '-'
  while not entry do
    local rows = redis.call('XRANGE', stream, from, '+', 'COUNT', 1000)
    for _, e in ipairs(rows) do
      local f = e[2]
      for j = 1, #f, 2 do
        if f[j] == 'id' and f[j + 1] == ARGV[2] then entry = e[1] end
      end
    end
    if #rows < 1000 then break end
    from = '(' .. rows[#rows][1]
  end
end
-- (No group yet: no consumer ever read the stream.)
local held = entry and redis.pcall('XPENDING', stream, ARGV[1], entry, entry, 1)
if state == 'queued' and entry and not (type(held) == 'table' and not held.err and #held > 0)
then
  local e = redis.call('XRANGE', stream, entry, entry)[1]
  if e then
    local data
    local f = e[2]
    for j = 1, #f, 2 do
      if f[j] == 'd' then data = f[j + 1] end
    end
    redis.call('XDEL', stream, entry)
    return finish(not redis.call('HGET', key, 'data') and data or nil)
  end
end
if ARGV[5] == 'waiting' then
  return 'running'
end
redis.call('HSET', key, 'cancel', ARGV[3])
-- Flags not yet consumed by an outcome, per queue: settle.lua and renew.lua look for a flag in
-- job records only while this is above 0 (an HGET per job saved on the hot path).
redis.call('HINCRBY', KEYS[4], 'flagged', 1)
return 'requested'
