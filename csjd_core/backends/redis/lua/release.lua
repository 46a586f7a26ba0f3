-- Hand back entries that were read but never ran (held ahead, or started and not taken by a
-- worker, at shutdown or grown too old): undo the attempt and the delivery (they must not count
-- against max_deliveries), mark the record 'handed' (so the reclaimer counts no lost hold), and
-- make the entries idle for a long time so any consumer's reclaimer takes them at once.
-- KEYS[1] stream, then the job hash of each entry (KEYS[1 + i] for entry i)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] idle (ms), then the entry ids
-- Returns one 1/0 per entry (0: no longer this consumer's).
local out = {}
for i = 4, #ARGV do
  local entry, key = ARGV[i], KEYS[i - 2]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    local state = redis.call('HGET', key, 'state')
    if state == 'running' then
      redis.call('HINCRBY', key, 'attempts', -1)
      redis.call('HSET', key, 'state', 'queued', 'handed', 1)
    elseif state == 'queued' then
      redis.call('HSET', key, 'handed', 1)
    end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry, 'IDLE', ARGV[3],
      'RETRYCOUNT', math.max(0, p[1][4] - 1), 'JUSTID')
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
