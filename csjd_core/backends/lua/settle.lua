-- Record attempt outcomes and acknowledge their entries, each op one atomic, fenced step:
-- an op is refused (0) unless this consumer still owns the entry with the same delivery count.
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] pending counter, KEYS[4] dead-letter stream,
--   KEYS[5] stats hash
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] job hash key prefix, ARGV[4] finished-record TTL (ms),
--   ARGV[5] JSON list of ops {k="ok"|"retry"|"dead", e=entry, id=job id, n=deliveries,
--   r=result JSON, err=error, tb=traceback, delay=ms, reason=dead-letter reason, a=attempts}
-- Returns one 1/0 per op.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, consumer, prefix, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local ops = cjson.decode(ARGV[5])
local out = {}
for i, op in ipairs(ops) do
  local p = redis.call('XPENDING', KEYS[1], group, op.e, op.e, 1)
  if #p == 0 or p[1][2] ~= consumer or (op.n and p[1][4] ~= op.n) then
    out[i] = 0
  else
    redis.call('XACK', KEYS[1], group, op.e)
    redis.call('XDEL', KEYS[1], op.e)
    local key = prefix .. (op.id or '')
    local state = op.id and op.id ~= '' and redis.call('HGET', key, 'state')
    local live = state and state ~= 'succeeded' and state ~= 'failed'
    redis.call('HINCRBY', KEYS[5], 'processed', 1)
    if op.k == 'ok' then
      if live then
        redis.call('HSET', key, 'state', 'succeeded', 'result', op.r or 'null', 'finished_at', now)
        redis.call('HDEL', key, 'entry')
        redis.call('PEXPIRE', key, ttl)
        redis.call('DECR', KEYS[3])
      end
      redis.call('HINCRBY', KEYS[5], 'succeeded', 1)
    elseif op.k == 'retry' and live then
      local due = now + math.floor(op.delay)
      redis.call('HSET', key, 'state', 'scheduled', 'error', op.err or '', 'traceback',
        op.tb or '', 'run_at', due)
      redis.call('HDEL', key, 'entry')
      redis.call('ZADD', KEYS[2], due, op.id)
      redis.call('HINCRBY', KEYS[5], 'retried', 1)
    else
      local data = (state and redis.call('HGET', key, 'data')) or op.d or ''
      local attempts = (state and redis.call('HGET', key, 'attempts')) or op.a or 0
      redis.call('XADD', KEYS[4], '*', 'id', op.id or '', 'entry', op.e, 'd', data,
        'error', op.err or '', 'traceback', op.tb or '', 'reason', op.reason or 'failed',
        'attempts', attempts, 'failed_at', now)
      if live then
        redis.call('HSET', key, 'state', 'failed', 'error', op.err or '', 'traceback',
          op.tb or '', 'finished_at', now)
        redis.call('HDEL', key, 'entry')
        redis.call('PEXPIRE', key, ttl)
        redis.call('DECR', KEYS[3])
      end
      redis.call('HINCRBY', KEYS[5], 'failed', 1)
    end
    out[i] = 1
  end
end
return out
