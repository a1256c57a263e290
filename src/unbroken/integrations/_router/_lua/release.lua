-- release: point a chat at no stream, only if it still points at the given one.
-- KEYS[1]: the chat's hash. ARGV: stream. Returns 1 if released, else 0. Keeps the owner.
if redis.call('HGET', KEYS[1], 'stream') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'stream', '', 'user_message', '', 'finished', '0')
return 1
