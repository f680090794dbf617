-- Saves configuration items and announces the change, atomically, so subscribers see every
-- change once and in order.
-- KEYS[1] the app's item hash, KEYS[2] the app's revision counter
-- ARGV[1] change channel, ARGV[2] the change notice (JSON), ARGV[3..] field, value pairs
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local rev = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], rev .. ' ' .. ARGV[2])
return rev
