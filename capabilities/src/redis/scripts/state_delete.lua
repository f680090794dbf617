-- Deletes one state item, checking its etag first when one is given.
-- KEYS[1] state key
-- ARGV[1] etag: '' = none
-- Returns 1 when deleted, 0 when it did not exist, -1 when the etag does not match.
local key = KEYS[1]
local etag = ARGV[1]
if etag ~= '' then
  local version = redis.call('HGET', key, 'version')
  if not version or version ~= etag then
    return -1
  end
end
return redis.call('DEL', key)
