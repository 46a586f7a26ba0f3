-- Record attempt outcomes and acknowledge their entries, each op one atomic, fenced step:
-- an op is refused (0) unless this consumer still owns the entry with the same delivery count.
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] pending counter, KEYS[4] dead-letter stream,
--   KEYS[5] stats hash, then the job hash of every op, in reply order (KEYS[5 + i] for op i).
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] finished-record TTL (ms), ARGV[4] dead letters kept
--   (the stream is trimmed to about that many, oldest first),
--   ARGV[5] JSON list of retry/dead ops {k="retry"|"dead", e=entry, id=job id, n=deliveries,
--   err=error, tb=traceback, delay=ms, reason=dead-letter reason, a=attempts, d=data,
--   p=progress JSON (optional)},
--   ARGV[6], ARGV[7] lowest and highest entry id of the successes, ARGV[8] how many of them
--   (the first ones) record their start too, then per success: entry, deliveries, attempts,
--   result JSON, data, progress JSON ('' for none).
-- Progress (ctx.set_progress): the attempt's last value not yet written by progress.lua goes
-- with its outcome, so a finished job shows its final progress; written only to a live record.
-- A compact record (enqueue.lua) leaves the job's data to the stream entry this step deletes:
-- the data moves into the record with the outcome (a retry is promoted from it, and status()
-- shows it until the record expires). The worker sends it back (the entry's d as it read it:
-- reading the entry here again costs Redis more than the whole start of an attempt); an op
-- without it takes the record's or the entry's. A retry whose data is gone with its entry
-- (deleted while the job ran) cannot run again: it is dead-lettered as poison instead.
-- An op's attempts (the attempt it records) is written with the outcome: an attempt started at
-- hand-over may settle before its start is recorded (started.lua, refused once this acks). An op
-- whose start was not recorded yet (s=1 for retry/dead ops) records it as well: started_at is
-- then the time of this step, and the start write is not sent at all when both go together.
-- Cancellation (issue 18, cancel.lua): a job whose record carries a 'cancel' flag ends
-- 'cancelled' whatever the op says: a success keeps its result, a retry is never scheduled, a
-- dead op writes no dead letter; the op's reply is then 2. A 'cancel' op (k="cancel", r=result
-- JSON or absent, err/tb if it raised) records an attempt that stopped for its cancellation.
-- Returns one 1/0 (2: recorded as cancelled) per op: the JSON ops first, then the successes.
-- Acks, deletes and counters are issued once per call (invisible to others: the script is one
-- atomic step).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, consumer, ttl, keep = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local out = {}
local acked, seen = {}, {}
local succeeded, retried, failed, finished, cancelled = 0, 0, 0, 0, 0
local ops = cjson.decode(ARGV[5])
-- Job records are read for a cancel flag only while some flag of this queue is unconsumed
-- (cancel.lua counts them in the stats hash's 'flagged'; consumed here, they are uncounted).
local flagged = tonumber(redis.call('HGET', KEYS[5], 'flagged') or '0') > 0
local consumed = 0

-- The job data of stream entry `entry` (its 'd' field), or nil.
local function entry_data(entry)
  local e = redis.call('XRANGE', KEYS[1], entry, entry)[1]
  if e and type(e[2]) == 'table' then
    local f = e[2]
    for j = 1, #f, 2 do
      if f[j] == 'd' then return f[j + 1] end
    end
  end
  return nil
end

-- HSET on a job record, with its data too when it is known.
local function record(key, data, ...)
  if data then
    redis.call('HSET', key, 'data', data, ...)
  else
    redis.call('HSET', key, ...)
  end
end

for i, op in ipairs(ops) do
  local p = not seen[op.e] and redis.call('XPENDING', KEYS[1], group, op.e, op.e, 1)
  if not p or #p == 0 or p[1][2] ~= consumer or (op.n and p[1][4] ~= op.n) then
    out[#out + 1] = 0
  else
    seen[op.e] = true
    acked[#acked + 1] = op.e
    local key = KEYS[5 + i]
    local state = op.id and op.id ~= '' and redis.call('HGET', key, 'state')
    local live = state and state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled'
    local cancel = live and flagged and redis.call('HGET', key, 'cancel')
    if cancel then consumed = consumed + 1 end
    if op.s and live then
      redis.call('HSET', key, 'started_at', now, 'worker', consumer)
    end
    if op.p and live then redis.call('HSET', key, 'progress', op.p) end  -- progress (issue 18)
    local data = (op.d ~= '' and op.d) or (state and redis.call('HGET', key, 'data')) or
      entry_data(op.e)
    if cancel or (op.k == 'cancel' and live) then
      local fields = {'state', 'cancelled', 'cancel', cancel or op.reason or 'cancelled',
        'finished_at', now, 'attempts', op.a or redis.call('HGET', key, 'attempts') or 0}
      if op.r then
        fields[#fields + 1] = 'result'
        fields[#fields + 1] = op.r
      end
      if op.err and op.err ~= '' then
        fields[#fields + 1] = 'error'
        fields[#fields + 1] = op.err
        fields[#fields + 1] = 'traceback'
        fields[#fields + 1] = op.tb or ''
      end
      record(key, data, unpack(fields))
      redis.call('PEXPIRE', key, ttl)
      finished = finished + 1
      cancelled = cancelled + 1
      out[#out + 1] = (cancel and op.k ~= 'cancel') and 2 or 1
    elseif op.k == 'cancel' then  -- the job ended meanwhile (reclaimed and dead-lettered...)
      out[#out + 1] = 1
    else
      if op.k == 'retry' and live and not data then
        op.k, op.reason = 'dead', 'poison'
        op.err = 'its data is gone: its stream entry was deleted while it ran (last error: ' ..
          string.sub(op.err or '', 1, 200) .. ')'
      end
      if op.k == 'retry' and live then
        local due = now + math.floor(op.delay)
        record(key, data, 'state', 'scheduled', 'error', op.err or '', 'traceback', op.tb or '',
          'run_at', due, 'attempts', op.a)
        redis.call('ZADD', KEYS[2], due, op.id)
        retried = retried + 1
      else
        local attempts = op.a or (state and redis.call('HGET', key, 'attempts')) or 0
        redis.call('XADD', KEYS[4], 'MAXLEN', '~', keep, '*', 'id', op.id or '', 'entry', op.e,
          'd', data or '', 'error', op.err or '', 'traceback', op.tb or '', 'reason',
          op.reason or 'failed', 'attempts', attempts, 'failed_at', now)
        if live then
          record(key, data, 'state', 'failed', 'error', op.err or '', 'traceback', op.tb or '',
            'finished_at', now, 'attempts', attempts)
          redis.call('PEXPIRE', key, ttl)
          finished = finished + 1
        end
        failed = failed + 1
      end
      out[#out + 1] = 1
    end
  end
end
if #ARGV > 8 then
  -- One fence read for every success: this consumer's pending entries in their id range.
  local owned, from = {}, ARGV[6]
  while true do
    local p = redis.call('XPENDING', KEYS[1], group, from, ARGV[7], 1000, consumer)
    for _, e in ipairs(p) do owned[e[1]] = e[4] end
    if #p < 1000 then break end
    from = '(' .. p[#p][1]
  end
  local k = 5 + #ops
  local with_start = 8 + 6 * tonumber(ARGV[8])
  for i = 9, #ARGV, 6 do
    local entry = ARGV[i]
    k = k + 1
    if seen[entry] or owned[entry] ~= tonumber(ARGV[i + 1]) then
      out[#out + 1] = 0
    else
      seen[entry] = true
      acked[#acked + 1] = entry
      -- The fence passed: this attempt still owns the entry, so the job is running (only
      -- this consumer's settle or the reclaimer, which acks first, can end it).
      local data = ARGV[i + 4] ~= '' and ARGV[i + 4] or nil
      -- Refused over a cancellation (cancel.lua flagged it first): 'cancelled', result kept.
      local cancel = flagged and redis.call('HGET', KEYS[k], 'cancel')
      if cancel then
        consumed = consumed + 1
        record(KEYS[k], data, 'state', 'cancelled', 'result', ARGV[i + 3], 'finished_at', now,
          'attempts', ARGV[i + 2])
        cancelled = cancelled + 1
      elseif i < with_start then
        record(KEYS[k], data, 'state', 'succeeded', 'result', ARGV[i + 3], 'finished_at', now,
          'attempts', ARGV[i + 2], 'started_at', now, 'worker', consumer)
      else
        record(KEYS[k], data, 'state', 'succeeded', 'result', ARGV[i + 3], 'finished_at', now,
          'attempts', ARGV[i + 2])
      end
      if ARGV[i + 5] ~= '' then redis.call('HSET', KEYS[k], 'progress', ARGV[i + 5]) end
      redis.call('PEXPIRE', KEYS[k], ttl)
      finished = finished + 1
      if cancel then
        out[#out + 1] = 2
      else
        succeeded = succeeded + 1
        out[#out + 1] = 1
      end
    end
  end
end
for i = 1, #acked, 500 do
  local chunk = {unpack(acked, i, math.min(i + 499, #acked))}
  redis.call('XACK', KEYS[1], group, unpack(chunk))
  redis.call('XDEL', KEYS[1], unpack(chunk))
end
if #acked > 0 then redis.call('HINCRBY', KEYS[5], 'processed', #acked) end
if succeeded > 0 then redis.call('HINCRBY', KEYS[5], 'succeeded', succeeded) end
if retried > 0 then redis.call('HINCRBY', KEYS[5], 'retried', retried) end
if failed > 0 then redis.call('HINCRBY', KEYS[5], 'failed', failed) end
if cancelled > 0 then redis.call('HINCRBY', KEYS[5], 'cancelled', cancelled) end
if consumed > 0 then redis.call('HINCRBY', KEYS[5], 'flagged', -consumed) end
if finished > 0 then redis.call('INCRBY', KEYS[3], -finished) end  -- INCRBY: in the worker ACL
return out
