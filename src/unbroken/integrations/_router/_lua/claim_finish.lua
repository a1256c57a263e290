-- claim_finish: may the caller report this stream's end? Once for the stream the chat points
-- at (the first caller marks it), always for any other stream.
-- KEYS[1]: the chat's hash. ARGV: stream. Returns 1 (report it) or 0 (reported already).
if redis.call('HGET', KEYS[1], 'stream') ~= ARGV[1] then
  return 1
end
if redis.call('HGET', KEYS[1], 'finished') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'finished', '1')
return 1
