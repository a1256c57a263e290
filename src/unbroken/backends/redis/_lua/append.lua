-- append: append_to (see _append.lua) for one stream.
-- KEYS: meta, log, lease. ARGV: append_to's arguments.
return append_to(KEYS[1], KEYS[2], KEYS[3], ARGV, 1, #ARGV)
