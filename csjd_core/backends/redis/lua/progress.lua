-- Write the progress running attempts reported (ctx.set_progress), coalesced by the worker to
-- the last value per attempt, fenced: a value is written only while this consumer owns the
-- entry with the same delivery count and the job's record says 'running', so a value from an
-- attempt that lost its lease is refused and a late one never recreates or changes a finished
-- (or expired) record. The final value goes with the outcome instead (settle.lua's 'p').
-- KEYS[1] stream, then the job hash of each entry (KEYS[1 + i] for entry i)
-- ARGV[1] group, ARGV[2] consumer, then per entry: entry id, delivery count, progress JSON
-- Returns one 1/0 per entry.
local group, consumer = ARGV[1], ARGV[2]
local out = {}
local k = 1
for i = 3, #ARGV, 3 do
  k = k + 1
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == consumer and p[1][4] == tonumber(ARGV[i + 1]) and
      redis.call('HGET', KEYS[k], 'state') == 'running' then
    redis.call('HSET', KEYS[k], 'progress', ARGV[i + 2])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
