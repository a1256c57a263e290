-- append_to: add chunks to the log of an active stream owned by the token, then notify.
-- Used by append.lua (one stream) and append_many.lua (several streams in one call).
-- The stream's keys are meta, log, lease; its arguments are args[first] .. args[last]:
--   token, now, lease_ms, active_ms, first_seq, chars_added, sharded, channel, payload,
--   then per chunk: entry_id, data, offset.
-- Returns 'active' (appended), the terminal state, 'interrupted' (another token owns the
-- stream), false (no such stream), or an error reply (UNBROKEN_CORRUPT, or UNBROKEN_SEQ if
-- first_seq does not continue the log). Every check comes before the first write.

-- The share of the active TTL after which an append sets the TTLs again.
local TTL_PERIOD = 0.05

local function append_to(meta_key, log_key, lease_key, args, first, last)
  local token = args[first]
  local meta, refusal = owned_meta(meta_key, log_key, token)
  if not meta then
    return refusal
  end
  if meta.log_length ~= meta.chunks then
    return corrupt('log has ' .. meta.log_length .. ' entries, meta counts ' .. meta.chunks)
  end
  if tonumber(args[first + 4]) ~= meta.chunks then
    return redis.error_reply('UNBROKEN_SEQ append at seq ' .. args[first + 4]
      .. ' but the log has ' .. meta.chunks .. ' chunks')
  end

  local active_ms = args[first + 3]
  local count = (last - first - 8) / 3
  local bytes = 0
  for i = first + 9, last, 3 do
    redis.call('XADD', log_key, args[i], 'data', args[i + 1], 'offset', args[i + 2])
    bytes = bytes + string.len(args[i + 1])
  end
  if count > 0 then
    -- The counts read above plus this append's, in one write instead of an increment each.
    local now = args[first + 1]
    local fields = {'chunks', count_text(meta.chunks + count),
      'chars', count_text(meta.chars + tonumber(args[first + 5])),
      'bytes', count_text(meta.bytes + bytes), 'updated', now}
    -- The sliding TTL is set again once per TTL_PERIOD of the active TTL, not on every
    -- append: an active stream's keys live between (1 - TTL_PERIOD) and 1 active TTL after
    -- its last append. A clock that went back (another producer's) refreshes at once.
    local since = meta.refreshed and tonumber(now) - meta.refreshed
    if not since or since < 0 or since * 1000 >= tonumber(active_ms) * TTL_PERIOD then
      fields[#fields + 1] = 'refreshed'
      fields[#fields + 1] = now
      redis.call('PEXPIRE', log_key, active_ms)
      redis.call('PEXPIRE', meta_key, active_ms)
    end
    redis.call('HSET', meta_key, unpack(fields))
  else
    redis.call('PEXPIRE', meta_key, active_ms)
  end
  redis.call('SET', lease_key, token, 'PX', args[first + 2])
  if count > 0 then
    notify(args[first + 6], args[first + 7], args[first + 8])
  end
  return 'active'
end
