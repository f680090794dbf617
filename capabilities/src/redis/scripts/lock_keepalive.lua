-- Extends a lock only if the caller owns it.
-- KEYS[1] lock key, ARGV[1] owner, ARGV[2] new expiry in milliseconds
-- Returns 0 = extended, 1 = no such lock, 2 = held by another owner.
local owner = redis.call('GET', KEYS[1])
if not owner then
  return 1
end
if owner ~= ARGV[1] then
  return 2
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
