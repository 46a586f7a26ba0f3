-- Move due jobs from the delayed set to the stream (run_at reached, or a retry's backoff over).
-- A record waiting there holds its data; once queued, a 'compact' one leaves it to the new
-- stream entry and names that entry instead (a 'full' one keeps it: the form workers of
-- releases up to 0.1.0 need, see enqueue.lua). The compact record is written afresh: HDEL would
-- leave it in the hashtable encoding its data forced on it (Redis never converts a hash back to
-- a listpack).
-- A job of another priority band than the default goes to its band's stream: its record names
-- the band ('band', its index among KEYS[3...]: written by enqueue.lua and requeue_dead.lua,
-- kept by settle.lua's retry).
-- Nothing is moved while the queue's slot is being migrated to another node (resharding): the
-- job records are split between the two nodes then, and one that moved already can neither be
-- read here (refused after the ZREM: the job was lost) nor, on the importing node, be told from
-- a missing record (read_start.lua explains the probe; docs/scaling.md, Resharding).
-- KEYS[1] stream, KEYS[2] delayed zset, then the queue's band streams, highest first (keys.py
--   BANDS)
-- ARGV[1] job hash key prefix, ARGV[2] max jobs to move, ARGV[3] the record form: 'compact' or
--   'full'
-- Returns {moved, ms until the next due job or -1} ({0, -1} while the slot migrates)
if type(redis.pcall('EXISTS', KEYS[1], ARGV[1])) == 'table' then
  return {0, -1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local full = ARGV[3] == 'full'
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  local key = ARGV[1] .. id
  local f = redis.call('HGETALL', key)
  local data
  local stream = KEYS[1]
  local fields = {'state', 'queued'}  -- the compact record: every field but data and entry
  for j = 1, #f, 2 do
    local name = f[j]
    if name == 'data' then
      data = f[j + 1]
    elseif name ~= 'state' and name ~= 'entry' then
      local band = name == 'band' and tonumber(f[j + 1])
      if band and band >= 1 and KEYS[2 + band] then
        stream = KEYS[2 + band]
      end
      fields[#fields + 1] = name
      fields[#fields + 1] = f[j + 1]
    end
  end
  if data then
    local entry = redis.call('XADD', stream, '*', 'id', id, 'd', data)
    if full then
      redis.call('HSET', key, 'state', 'queued')
    else
      fields[#fields + 1] = 'entry'
      fields[#fields + 1] = entry
      redis.call('DEL', key)
      redis.call('HSET', key, unpack(fields))
    end
  end
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local wait = -1
if #head > 0 then
  wait = math.max(0, tonumber(head[2]) - now)
end
return {#ids, wait}
