-- Read new entries for this consumer: the first ones are started in the same atomic step (no
-- other consumer can claim an entry between the read and the start, so no fence is needed), the
-- rest are read ahead and left unstarted (their job record stays 'queued', its attempts
-- unchanged: a worker starts them at hand-over, see started.lua). An entry read with '>' has
-- been delivered exactly once: its fencing token is 1.
-- Non-blocking: the reader falls back to a blocking XREADGROUP when this returns nothing.
-- Nothing is read while the queue's slot is being migrated to another node (resharding): the job
-- records are split between the two nodes then. On the migrating node, touching a record that
-- moved already is refused ("non local key") after the XREADGROUP delivered the entries; on the
-- importing node (reached by ASK) a record still on the other reads as missing, and the entry
-- would be dead-lettered as poison. The probe: EXISTS of the stream and of a key that never
-- exists (the record of the empty job id) is refused only while the slot migrates (a key of
-- the slot absent from this node may be on the other), and counts in a stable slot.
-- Priorities: the queue's band streams are read highest first, each for what the ones before
-- left of the count (XREADGROUP's COUNT is per stream: one call over all of them could return
-- the count from each), so the entries started are the highest bands' oldest, and those read
-- ahead follow them in that order.
-- Expiry (issue 18): an entry whose data begins with {"expires":MS (codec.encode puts it first)
-- and whose job never started is not run once Redis's clock reaches MS: acked and deleted, its
-- record 'cancelled' with cancel='expired', the pending counter decremented, counted.
-- KEYS[1]... the queue's band streams, highest first (keys.py BANDS; all in one hash tag), then
--   the pending counter and the stats hash (the last two)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] job hash key prefix, ARGV[4] entries to start,
--   ARGV[5] entries to read ahead, ARGV[6] finished-record TTL (ms)
-- Returns a flat list, per entry: entry id, job id, data, attempts (after the start if started;
-- -1: no job record, -2: an entry without id or data; both are poison for the caller to
-- dead-letter; -3: expired, ended here), started (1 or 0), its band (an index of KEYS); then,
-- when it read any entry, one last element: Redis's clock (TIME, in ms) when it read them (the
-- reader measures each job's lag from its entry id's ms with this same clock). 0 instead of a
-- list while the slot migrates (the reader does not block on these streams meanwhile).
if type(redis.pcall('EXISTS', KEYS[1], ARGV[3])) == 'table' then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, consumer, prefix = ARGV[1], ARGV[2], ARGV[3]
local start = tonumber(ARGV[4])
local count = start + tonumber(ARGV[5])
local bands = #KEYS - 2
local pending, stats = KEYS[bands + 1], KEYS[bands + 2]
local out = {}
local i = 0  -- entries read so far, in every band
-- One entry read from band `band`: started if it is among the first `start`.
local function take(e, band)
  i = i + 1
  local f = e[2]
  local id, data = false, false
  for j = 1, #f, 2 do
    if f[j] == 'id' then id = f[j + 1] elseif f[j] == 'd' then data = f[j + 1] end
  end
  local attempts, started = -2, 0
  local expires = data and tonumber(string.match(data, '^{"expires":(%d+)'))
  if expires and expires <= now and id and id ~= '' then
    local key = prefix .. id
    local state = redis.call('HGET', key, 'state')
    if state and tonumber(redis.call('HGET', key, 'attempts') or '0') == 0 then  -- unstarted
      redis.call('XACK', KEYS[band], group, e[1])
      redis.call('XDEL', KEYS[band], e[1])
      redis.call('HSET', key, 'data', data, 'state', 'cancelled', 'cancel', 'expired',
        'finished_at', now)
      redis.call('PEXPIRE', key, tonumber(ARGV[6]))
      redis.call('INCRBY', pending, -1)
      redis.call('HINCRBY', stats, 'cancelled', 1)
      attempts = -3
    end
  end
  if attempts == -3 then
    -- expired: ended above
  elseif id and data and id ~= '' then
    local key = prefix .. id
    if i > start then
      -- Every job record has its state (a compact one has no attempts before its first
      -- start). HGET, not HMGET: the worker's ACL user (docs/production.md) has no HMGET.
      attempts = tonumber(redis.call('HGET', key, 'attempts') or -1)
      if attempts == -1 and redis.call('HGET', key, 'state') then
        attempts = 0
      end
    elseif redis.call('HSET', key, 'state', 'running', 'started_at', now, 'worker', consumer) == 3
    then
      redis.call('DEL', key)  -- three new fields: there was no record
      attempts = -1
    else
      attempts, started = redis.call('HINCRBY', key, 'attempts', 1), 1
    end
  end
  out[#out + 1] = e[1]
  out[#out + 1] = id or ''
  out[#out + 1] = data or ''
  out[#out + 1] = attempts
  out[#out + 1] = started
  out[#out + 1] = band
end
for band = 1, bands do
  if i >= count then
    break
  end
  -- XLEN first: an empty band (the usual case of the high and low ones) costs no group lookup.
  if redis.call('XLEN', KEYS[band]) > 0 then
    local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - i,
      'STREAMS', KEYS[band], '>')
    for _, e in ipairs(r and r[1][2] or {}) do
      take(e, band)
    end
  end
end
if i > 0 then
  out[#out + 1] = now
end
return out
