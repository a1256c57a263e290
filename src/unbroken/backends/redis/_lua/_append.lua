-- append_to: one stream's append, when token owns the active stream and the chunks continue
-- its log: the chunks as log entries, the notification, the TTLs set again, the lease renewed
-- if asked. Used by append.lua (one stream) and append_many.lua (several streams in one call).
-- args[first..last]: token, now, lease_ms (0: leave the lease), active_ms, first_seq, count,
-- chars, sharded, channel, payload, then per log entry: entry_id, offset, lengths, data.
-- Returns the byte offset after the append (an integer: the chunks are in the log), the
-- terminal state, 'interrupted' (another token owns the stream), false (no such stream), or
-- an error reply (UNBROKEN_CORRUPT, or UNBROKEN_SEQ if first_seq does not continue the log).
-- Every check comes before the first write.
--
-- This is the checked way to append. The backend also appends without a script (plain XADD
-- NOMKSTREAM and PUBLISH, see _backend.py) while it knows the lease to be valid, so the log,
-- not the meta, says where a stream ends: each entry carries the char offset (o) and the
-- byte offset (b) of its first chunk.

local function append_to(meta_key, log_key, lease_key, args, first, last)
  local token = args[first]
  local meta, refusal = owned_meta(meta_key, token)
  if not meta then
    return refusal
  end
  local seq, fields, err = last_entry(log_key)
  if err then
    return corrupt(err)
  end
  -- Without a last entry of this layout, the meta's counts: those of a stream with no log
  -- yet, or kept current by the earlier writer of that entry.
  local chunks, bytes = meta.chunks, meta.bytes
  if seq then
    chunks = seq + 1
    local counted, _, counted_bytes = log_counts(seq, fields)
    if counted then
      bytes = counted_bytes
    end
  end
  if tonumber(args[first + 4]) ~= chunks then
    return redis.error_reply('UNBROKEN_SEQ append at seq ' .. args[first + 4]
      .. ' but the log has ' .. chunks .. ' chunks')
  end

  local now, lease_ms, active_ms = args[first + 1], args[first + 2], args[first + 3]
  local count = tonumber(args[first + 5])
  for i = first + 10, last, 4 do
    local added = redis.pcall('XADD', log_key, args[i], 'o', args[i + 1], 'n', args[i + 2],
      'd', args[i + 3], 'b', count_text(bytes))
    if type(added) == 'table' and added['err'] then
      return corrupt('log refused an entry: ' .. added['err'])
    end
    bytes = bytes + string.len(args[i + 3])
  end
  if count > 0 then
    -- Not needed by this version's readers (they count from the log): kept roughly current
    -- for readers of the earlier version, which read the counts from the meta.
    redis.call('HSET', meta_key, 'chunks', count_text(chunks + count),
      'chars', count_text(tonumber(args[first + 11]) + tonumber(args[first + 6])),
      'bytes', count_text(bytes), 'updated', now)
  end
  -- The sliding TTL: set by every append through this script (a log is created only here)
  -- and by every lease renewal, not by the plain appends between them.
  redis.call('PEXPIRE', meta_key, active_ms)
  redis.call('PEXPIRE', log_key, active_ms)
  -- The engine renews the lease with one append per liveness tick, not with each.
  if lease_ms ~= '0' then
    redis.call('SET', lease_key, token, 'PX', lease_ms)
  end
  if count > 0 then
    notify(args[first + 7], args[first + 8], args[first + 9])
  end
  return bytes
end
