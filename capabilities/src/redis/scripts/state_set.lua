-- Writes one state item: a hash {data, version}. Atomic: the checks and the write happen in
-- one script, so no other client can slip in between.
-- KEYS[1] state key, KEYS[2] the store's version counter
-- ARGV[1] data
-- ARGV[2] etag: '' = none, else the version the caller read
-- ARGV[3] '1' = first-write (without an etag: only if the key does not exist)
-- ARGV[4] ttl in seconds, '' = the item does not expire
-- Versions come from one counter per store (not per key), so a key deleted and written again
-- never gets back a version it had: an old ETag cannot match its successor.
-- Returns the new version, or -1 when the etag / first-write check fails.
local key = KEYS[1]
local etag = ARGV[2]
if etag ~= '' then
  local version = redis.call('HGET', key, 'version')
  if not version or version ~= etag then
    return -1
  end
elseif ARGV[3] == '1' and redis.call('EXISTS', key) == 1 then
  return -1
end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', key, 'data', ARGV[1], 'version', version)
if ARGV[4] == '' then
  redis.call('PERSIST', key)
else
  redis.call('EXPIRE', key, ARGV[4])
end
return version
