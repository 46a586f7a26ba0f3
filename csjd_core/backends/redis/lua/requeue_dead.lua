-- Move one dead letter back to its queue as a fresh job (attempts reset), its record in the
-- given form (see enqueue.lua).
-- KEYS[1] the stream of the job's priority band, KEYS[2] dead-letter stream, KEYS[3] pending
--   counter, KEYS[4] job hash
-- ARGV[1] dead-letter entry id, ARGV[2] job id, ARGV[3] job data, ARGV[4] the record form:
--   'compact' or 'full', ARGV[5] the job's band ('' for the default; else its index among the
--   band streams, which the record keeps for promote.lua as enqueue.lua writes it)
-- Returns 1 requeued, 0 no such dead letter, -1 the id belongs to an unfinished job.
if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0 then
  return 0
end
local state = redis.call('HGET', KEYS[4], 'state')
if state and state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entry = redis.call('XADD', KEYS[1], '*', 'id', ARGV[2], 'd', ARGV[3])
redis.call('DEL', KEYS[4])
if ARGV[5] and ARGV[5] ~= '' then
  redis.call('HSET', KEYS[4], 'band', ARGV[5])
end
if ARGV[4] == 'full' then
  redis.call('HSET', KEYS[4], 'state', 'queued', 'attempts', 0, 'data', ARGV[3],
    'enqueued_at', now)
else
  redis.call('HSET', KEYS[4], 'state', 'queued', 'enqueued_at', now, 'entry', entry)
end
redis.call('XDEL', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
