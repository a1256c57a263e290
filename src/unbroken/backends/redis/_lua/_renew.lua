-- renew: extend the lease and the sliding TTLs of an active stream owned by the token, and
-- record the time as its last update. Used by renew.lua (one stream) and renew_many.lua
-- (several streams in one call).
-- Returns 'active' (renewed), the terminal state, 'interrupted' (another token owns the
-- stream; nothing renewed), false (no such stream), or an error reply (UNBROKEN_CORRUPT).
local function renew(meta_key, log_key, lease_key, token, lease_ms, active_ms, now)
  local meta, refusal = owned_meta(meta_key, token)
  if not meta then
    return refusal
  end
  redis.call('SET', lease_key, token, 'PX', lease_ms)
  redis.call('HSET', meta_key, 'updated', now)
  redis.call('PEXPIRE', meta_key, active_ms)
  redis.call('PEXPIRE', log_key, active_ms)
  return 'active'
end
