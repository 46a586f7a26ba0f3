-- Renew the lease of running attempts, fenced: only entries still owned by this consumer with an
-- unchanged delivery count are touched (XCLAIM JUSTID resets idle time, keeps the counter).
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, then pairs: entry id, delivery count
-- Returns one 1/0 per pair.
local out = {}
for i = 3, #ARGV, 2 do
  local entry, n = ARGV[i], tonumber(ARGV[i + 1])
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  if #p > 0 and p[1][2] == ARGV[2] and p[1][4] == n then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
