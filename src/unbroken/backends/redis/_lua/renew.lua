-- renew: renew (see _renew.lua) for one stream.
-- KEYS: meta, log, lease. ARGV: token, lease_ms, active_ms, now.
return renew(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
