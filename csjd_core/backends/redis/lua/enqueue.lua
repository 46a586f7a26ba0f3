-- Admit jobs atomically: the pending cap, duplicate ids (unfinished, or finished within the dedupe
-- window), then XADD (or ZADD for run_at in the future) and the pending counter. With a schedule's
-- mark (a mark op in ARGV[4]: csjd_core.periodic), compare and advance the mark in the same step,
-- so any number of tickers enqueue each slot at most once (the rules of backends/_marks.py).
-- The record of a queued job is 'compact' (state, enqueued_at and its stream entry's id: the
-- entry holds its data) or, with ARGV[3] 'full', repeats the data as releases up to 0.1.0 wrote
-- it (what their workers need, docs/distributed.md "Upgrading"); a scheduled job's record holds
-- its data in both forms (it has no stream entry yet).
-- Priorities: a job of another band than the default is added to its band's stream and its
-- record names the band ('band'), so that promote.lua queues it there again when it is due (its
-- run_at, or a retry). The band streams are declared after the job records when a job needs
-- them (keys.py builds them; the job count comes from ARGV).
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] pending counter, [KEYS[4] the mark hash,] then one
--   job hash per job, [then the queue's band streams, highest first (keys.py BANDS)]
-- ARGV[1] max_pending_jobs, ARGV[2] dedupe window (ms), ARGV[3] the record form: 'compact' or
--   'full', ARGV[4] the mode: '' (all or nothing),
--   'relay' (admit the new ids up to the cap and skip the others, reporting each: the outbox
--   relay's mode), or a mark op: 'init', 'slot', 'skip', 'manual' or 'resume'. With a mark op:
--   ARGV[5] slot (Unix seconds), ARGV[6] max_running (0: no limit), ARGV[7] slots missed before
--   it (added to the misfires only if the mark is still ARGV[9]; for 'resume', the slots skipped
--   while paused, likewise), ARGV[8] the job record key prefix (the records of the mark's
--   running ids are named from data: in the queue's hash tag), ARGV[9] the mark the ticker
--   planned from ('' for none). Then per job: id, data, run_at_ms or "", max_attempts, its
--   band ('': the default, KEYS[1]; else its index among the band streams)
-- Returns {"ok"} | {"full", pending} | {"dup", job_id}; 'relay': {"relay", one code per job: 'a'
--   admitted, 'e' id taken (or repeated in the batch), 'f' over the cap}; a mark op also
--   {"init"} | {"done"} | {"skipped"} | {"paused"} | {"overlap"} | {"resumed"} (and a slot's
--   "dup" moved the mark past it); a TRYAGAIN error (nothing written) while the slot migrates
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local full = ARGV[3] == 'full'
local op = ARGV[4]
local k0, a0 = 3, 4
local stride = 5  -- ARGV per job
local mark, slot, misfired, running, max_running
local relay = op == 'relay'  -- the outbox relay's mode: admit the new ids, skip the rest
if op ~= '' and not relay then
  k0, a0 = 4, 9
  mark, slot = KEYS[4], ARGV[5]
  local current = tonumber(redis.call('HGET', mark, 'mark'))  -- nil: none (or not a number)
  -- A gap is counted once: by the step that finds the mark where its ticker's plan started.
  local planned = ARGV[9] ~= '' and current ~= nil and current == tonumber(ARGV[9])
  if op == 'init' then
    if current then
      return {'done'}
    end
    redis.call('HSET', mark, 'mark', slot)
    return {'init'}
  end
  if op == 'resume' then
    if redis.call('HGET', mark, 'paused') ~= '1' then
      return {'done'}
    end
    if not current or current < tonumber(slot) then
      redis.call('HSET', mark, 'mark', slot)
    end
    redis.call('HSET', mark, 'paused', 0)
    redis.call('HINCRBY', mark, 'paused_skips', planned and tonumber(ARGV[7]) or 0)
    return {'resumed'}
  end
  if op ~= 'manual' and current and current >= tonumber(slot) then
    return {'done'}
  end
  misfired = planned and tonumber(ARGV[7]) or 0
  if op == 'skip' then
    redis.call('HSET', mark, 'mark', slot)
    redis.call('HINCRBY', mark, 'misfires', misfired)
    return {'skipped'}
  end
  max_running = tonumber(ARGV[6])
  running = {}
  if max_running > 0 then  -- the runs still unfinished (an expired record finished long ago)
    -- While the slot migrates (resharding), a record on the other node reads as missing or is
    -- refused: nothing is written yet, so refuse the step the way Redis refuses a command
    -- then (the probe of read_start.lua).
    if type(redis.pcall('EXISTS', mark, ARGV[8])) == 'table' then
      return redis.error_reply('TRYAGAIN the queue\'s slot is being migrated')
    end
    for id in string.gmatch(redis.call('HGET', mark, 'running') or '', '%S+') do
      local state = redis.call('HGET', ARGV[8] .. id, 'state')
      -- ('cancelled' is finished too: issue 18)
      if state and state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
        running[#running + 1] = id
      end
    end
  end
  if op == 'slot' then
    local skipped
    if redis.call('HGET', mark, 'paused') == '1' then
      skipped = 'paused'
    elseif max_running > 0 and #running >= max_running then
      skipped = 'overlap'
    end
    if skipped then
      redis.call('HSET', mark, 'mark', slot, 'running', table.concat(running, ' '))
      redis.call('HINCRBY', mark, 'misfires', misfired)
      redis.call('HINCRBY', mark, skipped == 'paused' and 'paused_skips' or 'overlaps', 1)
      return {skipped}
    end
  end
end
local n = (#ARGV - a0) / stride
local pending = tonumber(redis.call('GET', KEYS[3]) or '0')
if not relay and pending + n > cap then
  return {'full', pending}
end
-- Per job: 'a' admitted, 'e' its id is taken (or repeated in the batch), 'f' over the cap.
local seen, stale, verdicts = {}, {}, {}
local admitted = 0
local taken
for i = 1, n do
  local id = ARGV[a0 + (i - 1) * stride + 1]
  local exists = seen[id]
  seen[id] = true
  if not exists then
    local state = redis.call('HGET', KEYS[k0 + i], 'state')
    if state then
      if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
        exists = true
      else
        local finished = tonumber(redis.call('HGET', KEYS[k0 + i], 'finished_at') or '0')
        exists = finished + window > now
        stale[i] = not exists  -- the record of a finished job whose dedupe window is over
      end
    end
  end
  if exists then
    if not relay then
      taken = id
      break
    end
    verdicts[i] = 'e'
  elseif pending + admitted + 1 > cap then
    verdicts[i] = 'f'  -- (only in relay mode: the cap was checked for the whole batch above)
  else
    verdicts[i] = 'a'
    admitted = admitted + 1
  end
end
if taken then
  if op == 'slot' then  -- enqueued before under its id: the mark moves past it
    redis.call('HSET', mark, 'mark', slot)
    redis.call('HINCRBY', mark, 'misfires', misfired)
    redis.call('HINCRBY', mark, 'duplicates', 1)
  end
  -- A write that changes nothing: WAIT counts only the writes of its own connection, so
  -- without one a durable_enqueue retry answered 'dup' would be acknowledged while the
  -- replica still lacks the job a first attempt stored (Valkey 8; Redis 7.0 waits anyway).
  redis.call('INCRBY', KEYS[3], 0)
  return {'dup', taken}
end
for i = 1, n do
  if verdicts[i] == 'a' then
    local base = a0 + (i - 1) * stride
    local id, data, run_at, max = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
    local band, stream = ARGV[base + 5], KEYS[1]
    local key = KEYS[k0 + i]
    if stale[i] then
      redis.call('DEL', key)
    end
    if band ~= '' then
      stream = KEYS[k0 + n + tonumber(band)]
      redis.call('HSET', key, 'band', band)
    end
    if run_at ~= '' and tonumber(run_at) > now then
      if full then
        redis.call('HSET', key, 'state', 'scheduled', 'attempts', 0, 'max', max, 'data', data,
          'enqueued_at', now, 'run_at', run_at)
      else
        redis.call('HSET', key, 'state', 'scheduled', 'data', data, 'enqueued_at', now,
          'run_at', run_at)
      end
      redis.call('ZADD', KEYS[2], tonumber(run_at), id)
    else
      local entry = redis.call('XADD', stream, '*', 'id', id, 'd', data)
      if full then
        redis.call('HSET', key, 'state', 'queued', 'attempts', 0, 'max', max, 'data', data,
          'enqueued_at', now)
      else
        redis.call('HSET', key, 'state', 'queued', 'enqueued_at', now, 'entry', entry)
      end
    end
  end
end
redis.call('INCRBY', KEYS[3], admitted)
if relay then
  return {'relay', table.concat(verdicts)}
end
if op ~= '' then  -- 'slot' or 'manual', with its one job (relay returned above)
  local id = ARGV[a0 + 1]
  if max_running > 0 then  -- every run that may be unfinished ("run now" ones too)
    running[#running + 1] = id
  end
  redis.call('HSET', mark, 'running', table.concat(running, ' '), 'last_enqueued', id)
  if op == 'slot' then
    redis.call('HSET', mark, 'mark', slot)
    redis.call('HINCRBY', mark, 'misfires', misfired)
    redis.call('HINCRBY', mark, 'enqueued', 1)
  else
    redis.call('HINCRBY', mark, 'manual', 1)
  end
end
return {'ok'}
