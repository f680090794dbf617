-- Hands out the next id(s) of a sequence.
-- KEYS[1] counter key
-- ARGV[1] how many ids to reserve (1 for one id)
-- ARGV[2] biggerThan floor: '' = none; else ids handed out are greater than it
-- Returns the last id reserved (the range is [last - count + 1, last]).
if ARGV[2] ~= '' then
  local current = tonumber(redis.call('GET', KEYS[1]) or '0')
  local floor = tonumber(ARGV[2])
  if current < floor then
    redis.call('SET', KEYS[1], ARGV[2])
  end
end
return redis.call('INCRBY', KEYS[1], ARGV[1])
