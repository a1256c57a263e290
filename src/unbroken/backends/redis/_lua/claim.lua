-- claim: create the stream as active, owned by a token, with a fresh lease.
-- ARGV: token, now, lease_ms, active_ms.   Returns 1 if created, 0 if the id exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
-- No metadata means no stream: a log or lease left without it (its metadata expired a moment
-- earlier) belongs to a previous life of this id and must not leak into the new one.
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'state', 'active', 'token', ARGV[1], 'chunks', '0', 'chars', '0',
  'bytes', '0', 'created', ARGV[2], 'updated', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
return 1
