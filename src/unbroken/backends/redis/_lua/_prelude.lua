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

-- Returns meta (a table: state, token, chunks, chars, bytes), or nil when the stream does not
-- exist; plus an error text when the stored data is not readable. While a stream is active
-- its counts may lag behind its log (appends need not write the meta): `last_entry` and
-- `log_counts` below say where the log ends.
-- The read itself reveals a key of the wrong type (pcall returns its WRONGTYPE error), so
-- the usual path runs no TYPE: only a missing or unreadable key is looked at more closely.
-- The log is not read here: its entries are checked by the commands that touch it (XADD
-- refuses an id that does not come after the last one) and by every reader.
local function read_meta(meta_key)
  local v = redis.pcall('HMGET', meta_key, 'state', 'token', 'chunks', 'chars', 'bytes')
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
    bytes = tonumber(v[5]),
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

-- Sets a log's last entry id past any id XADD can add: every later XADD fails, so an ended
-- stream's log can never grow (the plain pipelined appends rely on it: see _backend.py).
local SEALED_ID = '18446744073709551615-18446744073709551615'

-- The log's last entry: the seq of its last chunk and its fields (a table), or nil when the
-- log is missing or empty; plus an error text when the log is not one unbroken wrote.
local function last_entry(log_key)
  local reply = redis.pcall('XREVRANGE', log_key, '+', '-', 'COUNT', 1)
  if reply['err'] then
    return nil, nil, 'log key holds a ' .. key_type(log_key)
  end
  if #reply == 0 then
    return nil, nil, nil
  end
  local counter = string.match(reply[1][1], '^0%-(%d+)$')
  if not counter or #counter > 15 or counter == '0' then
    return nil, nil, 'log entry id ' .. reply[1][1] .. ' is not a chunk id'
  end
  local fields = {}
  local flat = reply[1][2]
  for i = 1, #flat - 1, 2 do
    fields[flat[i]] = flat[i + 1]
  end
  return tonumber(counter) - 1, fields, nil
end

-- The counts (chunks, chars, bytes) of a log up to its last entry (seq, fields), when that
-- entry carries its byte offset b; nil for an entry of an earlier layout, whose writer kept
-- the meta's counts current instead.
local function log_counts(seq, fields)
  local b, o, n, d = fields['b'], fields['o'], fields['n'], fields['d']
  if not (is_count(b) and is_count(o) and type(n) == 'string' and type(d) == 'string') then
    return nil
  end
  local chars = tonumber(o)
  for length in string.gmatch(n, '%d+') do
    chars = chars + tonumber(length)
  end
  return seq + 1, chars, tonumber(b) + string.len(d)
end
