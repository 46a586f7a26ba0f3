-- Delete a consumer only if its pending list is empty (XGROUP DELCONSUMER drops its PEL).
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer
-- Returns 1 if deleted, 0 if it still has pending entries.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
