-- pack: replace the log of an ended stream with its packed form, built by its producer from
-- its own copy of the log (unbroken._packing: the chunks joined and compressed).
-- ARGV: token, chunk_count, char_count, then per entry: entry_id, offset, packed.
-- Returns 1 if the log was replaced, 0 if it was left as it is: the stream is not ended, it
-- is another producer's, or the producer's copy does not hold exactly the stream's chunks.
local meta, err = read_meta(KEYS[1])
if err or not meta or meta.state == 'active' or meta.token ~= ARGV[1] then
  return 0
end
if meta.chunks ~= tonumber(ARGV[2]) or meta.chars ~= tonumber(ARGV[3]) then
  return 0
end
local ttl = redis.call('PTTL', KEYS[2])
if ttl == -2 or redis.call('TYPE', KEYS[2])['ok'] ~= 'stream' then
  return 0
end
-- Readers between two pages see no difference: each entry's id is its last chunk's, as
-- before, and a reader skips the chunks of an entry it already has.
redis.call('DEL', KEYS[2])
for i = 4, #ARGV, 3 do
  redis.call('XADD', KEYS[2], ARGV[i], 'o', ARGV[i + 1], 'z', ARGV[i + 2])
end
redis.call('XSETID', KEYS[2], SEALED_ID)  -- sealed again, as finish.lua left it
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
