-- finish: move an active stream to a terminal state (first terminal state wins), then notify.
-- ARGV: state, has_error, error, has_token, token, only_if_lease_expired, now, retention_ms,
--       sharded, channel, ends_channel, payload.
-- Returns the state afterwards, or nil (no such stream).
local meta, err = read_meta(KEYS[1])
if err then
  return corrupt(err)
end
if not meta then
  return false
end
if meta.state ~= 'active' then
  return meta.state
end
if ARGV[4] == '1' and meta.token ~= ARGV[5] then
  return meta.state
end
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  return meta.state
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished', ARGV[7], 'updated', ARGV[7])
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'error', ARGV[3])
else
  redis.call('HDEL', KEYS[1], 'error')
end
-- The final counts, from the log (appends need not write them to the meta), and the log
-- sealed: no append of the producer, whether it knows of the end or not, adds to it now.
-- An unreadable log is left to its readers, who report it.
local seq, fields, log_err = last_entry(KEYS[2])
if not log_err then
  if seq then
    local chunks, chars, bytes = log_counts(seq, fields)
    if chunks then
      redis.call('HSET', KEYS[1], 'chunks', count_text(chunks), 'chars', count_text(chars),
        'bytes', count_text(bytes))
    end
  end
  if seq or redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('XSETID', KEYS[2], SEALED_ID)
  end
end
redis.call('DEL', KEYS[3])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
notify(ARGV[9], ARGV[10], ARGV[12])
notify(ARGV[9], ARGV[11], ARGV[12])
return ARGV[1]
