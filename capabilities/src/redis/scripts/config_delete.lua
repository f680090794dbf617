-- Deletes configuration items and announces the ones that existed, atomically.
-- KEYS[1] the app's item hash, KEYS[2] the app's revision counter
-- ARGV[1] change channel, ARGV[2..] fields
-- Returns the number of items deleted.
local deleted = {}
for i = 2, #ARGV do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    deleted[#deleted + 1] = ARGV[i]
  end
end
if #deleted == 0 then
  return 0
end
local rev = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], rev .. ' {"deleted":' .. cjson.encode(deleted) .. '}')
return #deleted
