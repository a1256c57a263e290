-- renew_many: renew (see _renew.lua) for several streams, in one call: one command for Redis
-- to parse, dispatch and answer instead of one per stream. On Redis Cluster, for streams of
-- one hash slot only (a placement group's).
-- KEYS: meta, log, lease of each stream, in order.
-- ARGV: token, lease_ms, active_ms, now of each stream, in the same order.
-- Returns each stream's reply, in order (an error reply stands for that stream alone).
local replies = {}
for stream = 1, #KEYS / 3 do
  local keys, args = stream * 3, stream * 4
  replies[stream] = renew(KEYS[keys - 2], KEYS[keys - 1], KEYS[keys], ARGV[args - 3],
    ARGV[args - 2], ARGV[args - 1], ARGV[args])
end
return replies
