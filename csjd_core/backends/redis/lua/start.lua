-- Record the start of attempts for entries this consumer claimed (fenced: owner checked).
-- Issue 18: a job whose cancellation was requested while its entry was held (cancel.lua flagged
-- it: its consumer stopped, or handed it back), or that never started and whose expiry (ms, as
-- the reader decoded it from the entry) Redis's clock has reached, is not started: acked and
-- deleted, its record 'cancelled' (cancel = 'cancelled' or 'expired').
-- KEYS[1] stream, KEYS[2] pending counter, KEYS[3] stats hash, then the job hash of each entry
--   (KEYS[3 + i] for entry i)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] finished-record TTL (ms), then per entry: entry id,
--   expires (ms, '' for none)
-- Returns per entry {code, attempts, deliveries}: code 1 started, 0 not ours (claimed by another
-- consumer or acked), -1 no job record (an entry not written by enqueue: poison), 2 cancelled,
-- 3 expired.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, consumer = ARGV[1], ARGV[2]
local out = {}
local k = 3
for i = 4, #ARGV, 2 do
  k = k + 1
  local entry, key, expires = ARGV[i], KEYS[k], tonumber(ARGV[i + 1])
  local p = redis.call('XPENDING', KEYS[1], group, entry, entry, 1)
  local expired = expires and expires <= now and
    tonumber(redis.call('HGET', key, 'attempts') or '0') == 0
  if #p == 0 or p[1][2] ~= consumer then
    out[#out + 1] = {0, 0, 0}
  else
    local state = redis.call('HGET', key, 'state')
    local flag = state and redis.call('HGET', key, 'cancel')
    local cancel = flag or (state and expired and 'expired')
    if not state then
      out[#out + 1] = {-1, 0, p[1][4]}
    elseif cancel then
      local e = redis.call('XRANGE', KEYS[1], entry, entry)[1]
      if e and not redis.call('HGET', key, 'data') then
        for j = 1, #e[2], 2 do
          if e[2][j] == 'd' then redis.call('HSET', key, 'data', e[2][j + 1]) end
        end
      end
      redis.call('XACK', KEYS[1], group, entry)
      redis.call('XDEL', KEYS[1], entry)
      if flag and state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
        redis.call('HINCRBY', KEYS[3], 'flagged', -1)  -- consumed (see cancel.lua)
      end
      if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
        redis.call('HSET', key, 'state', 'cancelled', 'cancel', cancel, 'finished_at', now)
        redis.call('PEXPIRE', key, tonumber(ARGV[3]))
        redis.call('INCRBY', KEYS[2], -1)
        redis.call('HINCRBY', KEYS[3], 'cancelled', 1)
      end
      out[#out + 1] = {cancel == 'expired' and 3 or 2, 0, p[1][4]}
    else
      local attempts = redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('HSET', key, 'state', 'running', 'started_at', now, 'worker', consumer)
      out[#out + 1] = {1, attempts, p[1][4]}
    end
  end
end
return out
