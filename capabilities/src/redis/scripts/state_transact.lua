-- Applies a state transaction all-or-nothing: every check runs before any write.
-- KEYS[1..n] the key of each operation, KEYS[n+1] the store's version counter
-- ARGV, 5 per operation i (base = (i-1)*5):
--   op ('set' | 'del'), etag ('' = none), first-write ('1' | '0'), ttl ('' | seconds), data
-- Returns {0, 0} when applied, {-1, i} when operation i fails its etag / first-write check,
-- {-2, i} when key i holds a value that is not a state hash (a write would fail half-way).
local n = #KEYS - 1
local counter = KEYS[n + 1]
-- Phase 1: check. Track what each key will look like after the operations before it, so two
-- operations on one key are judged in order. Versions the transaction will issue are marked
-- 'pending': no ETag the caller holds can match them.
local seen, exists, version = {}, {}, {}
for i = 1, n do
  local key = KEYS[i]
  if not seen[key] then
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'hash' and kind ~= 'none' then
      return {-2, i}
    end
    seen[key] = true
    exists[key] = kind == 'hash'
    version[key] = redis.call('HGET', key, 'version')
  end
  local base = (i - 1) * 5
  local op, etag, first = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  if etag ~= '' then
    if not version[key] or version[key] ~= etag then
      return {-1, i}
    end
  elseif op == 'set' and first == '1' and exists[key] then
    return {-1, i}
  end
  if op == 'set' then
    exists[key] = true
    version[key] = 'pending'
  else
    exists[key] = false
    version[key] = false
  end
end
-- Phase 2: apply.
for i = 1, n do
  local key = KEYS[i]
  local base = (i - 1) * 5
  if ARGV[base + 1] == 'set' then
    local v = redis.call('INCR', counter)
    redis.call('HSET', key, 'data', ARGV[base + 5], 'version', v)
    if ARGV[base + 4] == '' then
      redis.call('PERSIST', key)
    else
      redis.call('EXPIRE', key, ARGV[base + 4])
    end
  else
    redis.call('DEL', key)
  end
end
return {0, 0}
