-- renew_many: renew (see _renew.lua) for several streams, in one call: one command for Redis
-- to parse, dispatch and answer instead of one per stream. Not for Redis Cluster, where the
-- streams' keys live in different slots.
-- KEYS: meta, log, lease of each stream, in order. ARGV: token, lease_ms, active_ms of each.
-- Returns each stream's reply, in order (an error reply stands for that stream alone).
local replies = {}
for stream = 1, #KEYS / 3 do
  local at = stream * 3
  replies[stream] = renew(KEYS[at - 2], KEYS[at - 1], KEYS[at], ARGV[at - 2], ARGV[at - 1],
    ARGV[at])
end
return replies
