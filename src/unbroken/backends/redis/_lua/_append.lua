-- append_to: add chunks to the log of an active stream owned by the token, then notify.
-- Used by append.lua (one stream) and append_many.lua (several streams in one call).
-- The stream's keys are meta, log, lease; its arguments are args[first] .. args[last]:
--   token, now, lease_ms (0: leave the lease as it is), active_ms, first_seq, chunk_count,
--   chars_added, sharded, channel, payload,
--   then per log entry (several consecutive chunks): entry_id, offset, lengths, data.
-- Returns 'active' (appended), the terminal state, 'interrupted' (another token owns the
-- stream), false (no such stream), or an error reply (UNBROKEN_CORRUPT, or UNBROKEN_SEQ if
-- first_seq does not continue the log). Every check comes before the first write.

-- The share of the active TTL after which an append sets the TTLs again.
local TTL_PERIOD = 0.05

local function append_to(meta_key, log_key, lease_key, args, first, last)
  local token = args[first]
  local meta, refusal = owned_meta(meta_key, token)
  if not meta then
    return refusal
  end
  if tonumber(args[first + 4]) ~= meta.chunks then
    return redis.error_reply('UNBROKEN_SEQ append at seq ' .. args[first + 4]
      .. ' but the log has ' .. meta.chunks .. ' chunks')
  end

  local now, lease_ms, active_ms = args[first + 1], args[first + 2], args[first + 3]
  local count = tonumber(args[first + 5])
  local bytes = 0
  for i = first + 10, last, 4 do
    -- The log is not checked beforehand: an entry id at or below the log's last one (a log
    -- someone else wrote to) makes the first XADD fail, before anything is written, and a
    -- later entry of the same append has a higher id than the one just added.
    local added = redis.pcall('XADD', log_key, args[i], 'o', args[i + 1], 'n', args[i + 2],
      'd', args[i + 3])
    if type(added) == 'table' and added['err'] then
      return corrupt('log refused an entry: ' .. added['err'])
    end
    bytes = bytes + string.len(args[i + 3])
  end
  if count > 0 then
    -- The counts read above plus this append's, in one write instead of an increment each.
    local fields = {'chunks', count_text(meta.chunks + count),
      'chars', count_text(meta.chars + tonumber(args[first + 6])),
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
  -- The engine renews the lease with one append per liveness tick, not with each.
  if lease_ms ~= '0' then
    redis.call('SET', lease_key, token, 'PX', lease_ms)
  end
  if count > 0 then
    notify(args[first + 7], args[first + 8], args[first + 9])
  end
  return 'active'
end
