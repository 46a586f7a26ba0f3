-- Move due jobs from the delayed set to the stream (run_at reached, or a retry's backoff over).
-- Nothing is moved while the queue's slot is being migrated to another node (resharding): the
-- job records are split between the two nodes then, and one that moved already can neither be
-- read here (refused after the ZREM: the job was lost) nor, on the importing node, be told from
-- a missing record (read_start.lua explains the probe; docs/scaling.md, Resharding).
-- KEYS[1] stream, KEYS[2] delayed zset
-- ARGV[1] job hash key prefix, ARGV[2] max jobs to move
-- Returns {moved, ms until the next due job or -1} ({0, -1} while the slot migrates)
if type(redis.pcall('EXISTS', KEYS[1], ARGV[1])) == 'table' then
  return {0, -1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  local key = ARGV[1] .. id
  local data = redis.call('HGET', key, 'data')
  if data then
    redis.call('XADD', KEYS[1], '*', 'id', id, 'd', data)
    redis.call('HSET', key, 'state', 'queued')
  end
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local wait = -1
if #head > 0 then
  wait = math.max(0, tonumber(head[2]) - now)
end
return {#ids, wait}
