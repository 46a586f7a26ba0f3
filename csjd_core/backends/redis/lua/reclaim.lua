-- Recover entries whose consumer stopped renewing them: XAUTOCLAIM the idle ones (from the
-- caller's cursor), then dead-letter those that are now over max_deliveries (poison that kills
-- workers). XAUTOCLAIM's reply carries no delivery counts, so each claimed entry's count is read
-- with XPENDING in this same script: every entry handed back to the caller has been checked.
-- An entry whose job record still says 'queued' was never recorded as started: handed back
-- (release.lua undid its delivery and marked the record 'handed'), or held ahead by a consumer
-- that stopped: then this claim's delivery is undone and the hold counted as lost in the
-- record's 'lost' field instead, which max_deliveries caps too (a handler that kills its process
-- before its start is recorded must not loop forever).
-- Nothing is claimed while the queue's slot is being migrated to another node (resharding): the
-- XAUTOCLAIM would count a delivery for entries whose job records may be on the other node
-- (read_start.lua explains the probe; docs/scaling.md, Resharding).
-- KEYS[1] stream, KEYS[2] pending counter, KEYS[3] dead-letter stream, KEYS[4] stats hash
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] lease (ms), ARGV[4] max_deliveries, ARGV[5] count,
--   ARGV[6] XAUTOCLAIM cursor, ARGV[7] job hash key prefix, ARGV[8] finished-record TTL (ms),
--   ARGV[9] dead letters kept (the stream is trimmed to about that many, oldest first)
-- Returns {next cursor, claimed entries, deleted ids, dead-lettered job ids} (nothing, cursor
--   0-0, while the slot migrates)
if type(redis.pcall('EXISTS', KEYS[1], ARGV[7])) == 'table' then
  return {'0-0', {}, {}, {}}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, consumer, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local maxd, count, prefix, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[7], tonumber(ARGV[8])
local r = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, lease, ARGV[6], 'COUNT', count)
local claimed, dead = {}, {}
for _, e in ipairs(r[2]) do
  local entry = e[1]
  local id, data = '', ''
  local f = e[2]
  if type(f) == 'table' then
    for j = 1, #f, 2 do
      if f[j] == 'id' then id = f[j + 1] elseif f[j] == 'd' then data = f[j + 1] end
    end
  end
  local key = prefix .. id
  local state = id ~= '' and redis.call('HGET', key, 'state')
  -- The claim counted one more delivery: the entry had `deliveries - 1` without an outcome.
  local deliveries = redis.call('XPENDING', KEYS[1], group, entry, entry, 1)[1][4]
  local reason
  if state == 'queued' then
    local lost = 0
    if redis.call('HGET', key, 'handed') then
      redis.call('HDEL', key, 'handed')  -- release.lua undid the delivery already
    else
      lost = redis.call('HINCRBY', key, 'lost', 1)
      redis.call('XCLAIM', KEYS[1], group, consumer, 0, entry, 'RETRYCOUNT', deliveries - 1,
        'JUSTID')
    end
    if lost > maxd then
      reason = 'lost ' .. lost .. ' times by consumers that stopped before recording its ' ..
        'start (killed while holding it ahead, or its handler kills the process at once)'
    end
  elseif deliveries > maxd then
    reason = 'delivered ' .. (deliveries - 1) .. ' times without an outcome (its worker ' ..
      'died or lost the lease each time)'
  end
  local live = state and state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled'
  -- A job whose cancellation was requested (cancel.lua's flag) ends 'cancelled', never failed.
  local flag = reason and live and redis.call('HGET', key, 'cancel')
  if not reason then
    claimed[#claimed + 1] = e
  else
    if not flag then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'id', id, 'entry', entry, 'd',
        data, 'error', reason, 'traceback', '', 'reason', 'max_deliveries', 'attempts',
        (state and redis.call('HGET', key, 'attempts')) or 0, 'failed_at', now)
    end
    redis.call('XACK', KEYS[1], group, entry)
    redis.call('XDEL', KEYS[1], entry)
    if live then
      -- A compact record's data goes with the entry: it moves into the record (settle.lua).
      if data ~= '' then redis.call('HSET', key, 'data', data) end
      redis.call('HSET', key, 'state', flag and 'cancelled' or 'failed', 'error', reason,
        'finished_at', now)
      redis.call('PEXPIRE', key, ttl)
      redis.call('DECR', KEYS[2])
    end
    if flag then
      redis.call('HINCRBY', KEYS[4], 'flagged', -1)  -- consumed (see cancel.lua)
      redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
    else
      redis.call('HINCRBY', KEYS[4], 'failed', 1)
      dead[#dead + 1] = id
    end
  end
end
return {r[1], claimed, r[3] or {}, dead}
