-- renew_lease: extend the lease and the sliding TTL of an active stream owned by the token.
-- ARGV: token, lease_ms, active_ms.
-- Returns 'active' (renewed), the terminal state, 'interrupted' (another token owns the
-- stream; nothing renewed), or nil (no such stream).
local meta, refusal = owned_meta(KEYS[1], ARGV[1])
if not meta then
  return refusal
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 'active'
