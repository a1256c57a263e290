-- append: add chunks to the log of an active stream owned by the token, then notify.
-- ARGV: token, now, lease_ms, active_ms, first_seq, chars_added, sharded, channel, payload,
--       then per chunk: entry_id, data, offset.
-- Returns 'active' (appended), the terminal state, 'interrupted' (another token owns the
-- stream), or nil (no such stream). Error UNBROKEN_SEQ if first_seq does not continue the log.
local meta, err = read_meta()
if err then
  return corrupt(err)
end
if not meta then
  return false
end
if meta.state ~= 'active' then
  return meta.state
end
if meta.token ~= ARGV[1] then
  return 'interrupted'
end
local log_length = redis.call('XLEN', KEYS[2])
if log_length ~= meta.chunks then
  return corrupt('log has ' .. log_length .. ' entries, meta counts ' .. meta.chunks)
end
if tonumber(ARGV[5]) ~= meta.chunks then
  return redis.error_reply('UNBROKEN_SEQ append at seq ' .. ARGV[5] .. ' but the log has '
    .. meta.chunks .. ' chunks')
end

local count = (#ARGV - 9) / 3
local bytes = 0
for i = 10, #ARGV, 3 do
  redis.call('XADD', KEYS[2], ARGV[i], 'data', ARGV[i + 1], 'offset', ARGV[i + 2])
  bytes = bytes + string.len(ARGV[i + 1])
end
if count > 0 then
  redis.call('HINCRBY', KEYS[1], 'chunks', count)
  redis.call('HINCRBY', KEYS[1], 'chars', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'bytes', bytes)
  redis.call('HSET', KEYS[1], 'updated', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
if count > 0 then
  notify(ARGV[7], ARGV[8], ARGV[9])
end
return 'active'
