-- renew_lease: extend the lease and the sliding TTL of an active stream owned by the token.
-- ARGV: token, lease_ms, active_ms.
-- Returns 'active' (renewed), the terminal state, 'interrupted' (another token owns the
-- stream; nothing renewed), or nil (no such stream).
local meta, err = read_meta()
if err then
  return corrupt(err)
end
if not meta then
  return false
end
if meta.state ~= 'active' then
  return meta.state
end
if meta.token ~= ARGV[1] then
  return 'interrupted'
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 'active'
