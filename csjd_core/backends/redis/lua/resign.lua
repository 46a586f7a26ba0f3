-- Give up a queue's maintainer role, only if this consumer holds it: a role that lapsed and was
-- taken by another consumer meanwhile stays with its new holder.
-- KEYS[1] the queue's maintainer key
-- ARGV[1] consumer
-- Returns 1 if the role was given up, 0 if this consumer did not hold it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
