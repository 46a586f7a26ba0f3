-- Renew the lease of running attempts, fenced: only entries still owned by this consumer with an
-- unchanged delivery count are touched (XCLAIM JUSTID resets idle time, keeps the counter).
-- The same round trip tells the consumer which of its jobs were cancelled meanwhile (cancel.lua
-- flagged their records): a running attempt notices a cancel within one heartbeat_interval. The
-- records are read only while the queue has an unconsumed flag (the stats hash's 'flagged').
-- KEYS[1] stream, KEYS[2] stats hash, then the job hash of each entry (KEYS[2 + i] for pair i)
-- ARGV[1] group, ARGV[2] consumer, then pairs: entry id, delivery count
-- Returns one flag per pair: 1 renewed, 2 renewed and its job's cancellation requested, 0 lost.
local out = {}
local flagged = tonumber(redis.call('HGET', KEYS[2], 'flagged') or '0') > 0
local k = 2
for i = 3, #ARGV, 2 do
  k = k + 1
  local entry, n = ARGV[i], tonumber(ARGV[i + 1])
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  if #p > 0 and p[1][2] == ARGV[2] and p[1][4] == n then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
    if flagged and redis.call('HGET', KEYS[k], 'cancel') then
      out[#out + 1] = 2
    else
      out[#out + 1] = 1
    end
  else
    out[#out + 1] = 0
  end
end
return out
