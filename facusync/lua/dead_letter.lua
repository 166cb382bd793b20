-- Add a dead letter unless the same refused change is one already (see facusync/stream.py).
-- KEYS[1] the dead-letter stream, KEYS[2] the signature index; ARGV[1] the signature, then
-- the dead letter's field/value pairs. Returns the new entry's id, or false.
if redis.call('HSETNX', KEYS[2], ARGV[1], '') == 0 then return false end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('HSET', KEYS[2], ARGV[1], id)
return id
