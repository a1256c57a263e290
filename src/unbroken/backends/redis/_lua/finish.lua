-- finish: move an active stream to a terminal state (first terminal state wins), then notify.
-- ARGV: state, has_error, error, has_token, token, only_if_lease_expired, now, retention_ms,
--       sharded, channel, ends_channel, payload.
-- Returns the state afterwards, or nil (no such stream).
local meta, err = read_meta(KEYS[1])
if err then
  return corrupt(err)
end
if not meta then
  return false
end
if meta.state ~= 'active' then
  return meta.state
end
if ARGV[4] == '1' and meta.token ~= ARGV[5] then
  return meta.state
end
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  return meta.state
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished', ARGV[7], 'updated', ARGV[7])
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'error', ARGV[3])
else
  redis.call('HDEL', KEYS[1], 'error')
end
redis.call('DEL', KEYS[3])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
notify(ARGV[9], ARGV[10], ARGV[12])
notify(ARGV[9], ARGV[11], ARGV[12])
return ARGV[1]
