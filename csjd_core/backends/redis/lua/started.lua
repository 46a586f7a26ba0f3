-- Record the start of attempts begun at hand-over (entries read ahead, see read_start.lua):
-- fenced, only entries this consumer still owns with the delivery count it read them with.
-- The attempt count is set, not incremented: the outcome sets it too (settle.lua), so the two
-- may arrive in either order, and one refused here is refused there.
-- KEYS[1] stream, then the job hash of each entry (KEYS[1 + i] for entry i)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3], ARGV[4] lowest and highest entry id, then per
--   entry: entry id, delivery count, attempt
-- Returns one 1/0 per entry.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, consumer = ARGV[1], ARGV[2]
local owned, from = {}, ARGV[3]
while true do
  local p = redis.call('XPENDING', KEYS[1], group, from, ARGV[4], 1000, consumer)
  for _, e in ipairs(p) do owned[e[1]] = e[4] end
  if #p < 1000 then break end
  from = '(' .. p[#p][1]
end
local out = {}
local k = 1
for i = 5, #ARGV, 3 do
  k = k + 1
  if owned[ARGV[i]] == tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[k], 'state', 'running', 'started_at', now, 'worker', consumer,
      'attempts', ARGV[i + 2])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
