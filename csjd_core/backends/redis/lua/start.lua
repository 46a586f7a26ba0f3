-- Record the start of attempts for entries this consumer claimed (fenced: owner checked).
-- KEYS[1] stream, then the job hash of each entry (KEYS[1 + i] for entry i)
-- ARGV[1] group, ARGV[2] consumer, then the entry ids
-- Returns per entry {code, attempts, deliveries}: code 1 started, 0 not ours (claimed by another
-- consumer or acked), -1 no job record (an entry not written by enqueue: poison).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, consumer = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local entry, key = ARGV[i], KEYS[i - 1]
  local p = redis.call('XPENDING', KEYS[1], group, entry, entry, 1)
  if #p == 0 or p[1][2] ~= consumer then
    out[#out + 1] = {0, 0, 0}
  else
    local state = redis.call('HGET', key, 'state')
    if not state then
      out[#out + 1] = {-1, 0, p[1][4]}
    else
      local attempts = redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('HSET', key, 'state', 'running', 'started_at', now, 'worker', consumer)
      out[#out + 1] = {1, attempts, p[1][4]}
    end
  end
end
return out
