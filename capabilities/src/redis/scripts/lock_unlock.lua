-- Releases a lock only if the caller owns it.
-- KEYS[1] lock key, ARGV[1] owner
-- Returns 0 = released, 1 = no such lock, 2 = held by another owner.
local owner = redis.call('GET', KEYS[1])
if not owner then
  return 1
end
if owner ~= ARGV[1] then
  return 2
end
redis.call('DEL', KEYS[1])
return 0
