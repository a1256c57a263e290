-- replace: point a chat at a new stream if it still points at the expected one.
-- KEYS[1]: the chat's hash. ARGV: owner, expected stream ('' = none), new stream,
-- user message id, ttl_ms.
-- Returns 1 (set), 0 (the chat points elsewhere) or -1 (another owner's chat).
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then
  return -1
end
local current = redis.call('HGET', KEYS[1], 'stream') or ''
if current ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'stream', ARGV[3], 'user_message', ARGV[4],
  'finished', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
