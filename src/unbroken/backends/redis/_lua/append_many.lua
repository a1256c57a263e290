-- append_many: append_to (see _append.lua) for several streams, in one call: one command for
-- Redis to parse, dispatch and answer instead of one per stream. On Redis Cluster, for streams
-- of one hash slot only (a placement group's).
-- KEYS: meta, log, lease of each stream, in order.
-- ARGV: for each stream in the same order, the count of its arguments, then those arguments.
-- Returns each stream's reply, in order (an error reply stands for that stream alone).
local replies = {}
local at = 1
for stream = 1, #KEYS / 3 do
  local count = tonumber(ARGV[at])
  local keys = stream * 3
  replies[stream] = append_to(KEYS[keys - 2], KEYS[keys - 1], KEYS[keys], ARGV, at + 1, at + count)
  at = at + count + 1
end
return replies
