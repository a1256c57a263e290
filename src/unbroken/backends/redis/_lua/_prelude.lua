-- Shared by every script: unbroken.backends.redis prepends it to each script's source.
-- KEYS[1] = meta (hash), KEYS[2] = log (stream), KEYS[3] = lease (string); see _keys.py.
--
-- Anything in these keys that unbroken did not write is reported as an error reply starting
-- with UNBROKEN_CORRUPT (Python raises CorruptStreamError for that stream only), and it is
-- checked *before* the first write, because a script that fails halfway is not rolled back.

local STATES = {active = true, done = true, error = true, cancelled = true, interrupted = true}

local function corrupt(why)
  return redis.error_reply('UNBROKEN_CORRUPT ' .. why)
end

local function key_type(key)
  return redis.call('TYPE', key)['ok']
end

local function is_count(value)
  return type(value) == 'string' and string.match(value, '^%d+$') ~= nil and #value < 16
end

-- Returns meta (a table: state, token, chunks, chars, bytes, refreshed), or nil when the
-- stream does not exist; plus an error text when the stored data is not readable.
-- refreshed: when an append last set the keys' TTLs (see _append.lua), nil if never or
-- unreadable.
-- The read itself reveals a key of the wrong type (pcall returns its WRONGTYPE error), so
-- the usual path runs no TYPE: only a missing or unreadable key is looked at more closely.
-- The log is not read here: its entries are checked by the commands that touch it (XADD
-- refuses an id that does not come after the last one) and by every reader.
local function read_meta(meta_key)
  local v = redis.pcall('HMGET', meta_key, 'state', 'token', 'chunks', 'chars', 'bytes',
    'refreshed')
  if v['err'] then
    return nil, 'meta key holds a ' .. key_type(meta_key)
  end
  if not (v[1] or v[2] or v[3] or v[4] or v[5]) and key_type(meta_key) == 'none' then
    return nil, nil
  end
  if not STATES[v[1]] then
    return nil, 'meta has no valid state'
  end
  if type(v[2]) ~= 'string' then
    return nil, 'meta has no token'
  end
  if not (is_count(v[3]) and is_count(v[4]) and is_count(v[5])) then
    return nil, 'meta counts are not integers'
  end
  return {
    state = v[1], token = v[2], chunks = tonumber(v[3]), chars = tonumber(v[4]),
    bytes = tonumber(v[5]), refreshed = tonumber(v[6]),
  }, nil
end

-- A count as Redis stores it (Lua's own number formatting switches to exponents).
local function count_text(n)
  return string.format('%d', n)
end

-- The meta of an active stream owned by token; otherwise nil and what the script replies
-- instead: an error reply (corrupt data), false (no such stream), its terminal state, or
-- 'interrupted' (another token owns it).
local function owned_meta(meta_key, token)
  local meta, err = read_meta(meta_key)
  if err then
    return nil, corrupt(err)
  end
  if not meta then
    return nil, false
  end
  if meta.state ~= 'active' then
    return nil, meta.state
  end
  if meta.token ~= token then
    return nil, 'interrupted'
  end
  return meta, nil
end

local function notify(sharded, channel, payload)
  if sharded == '1' then
    redis.call('SPUBLISH', channel, payload)
  else
    redis.call('PUBLISH', channel, payload)
  end
end
