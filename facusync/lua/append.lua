-- Every write to the change stream made by the producer and reconcile, as one script with a
-- dispatch table (like dramatiq's dispatch.lua). A script runs as one unit, like MULTI/EXEC:
-- a chunk's entries, their fingerprints and the new watermark land together or not at all.
--
-- KEYS[1] the source lock, KEYS[2] the watermark, then the command's keys.
-- ARGV[1] the lock token ('' = not checked), ARGV[2] the watermark expected ('' = must be
-- absent, '*' = not checked), ARGV[3] the command, then the command's arguments.
-- Returns -1 if the lock is not ours, -2 if the watermark moved (nothing is written then).

if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[2] == '' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
elseif ARGV[2] ~= '*' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return -2 end

-- KEYS[3] the stream, KEYS[4] the fingerprints. ARGV[4] the new watermark (or ''), ARGV[5]
-- the fields per entry, then per entry: fingerprint field, digest, field/value pairs.
local function append()
  local per = tonumber(ARGV[5])
  local i = 6
  local n = 0
  while i <= #ARGV do
    redis.call('XADD', KEYS[3], '*', unpack(ARGV, i + 2, i + 1 + per))
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
    i = i + 2 + per
    n = n + 1
  end
  if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4]) end
  return n
end

-- Tombstones. KEYS[3] the stream, KEYS[4] the fingerprints. ARGV[4] the fields per entry,
-- then per entry: the key (whose fingerprint is forgotten) and field/value pairs.
local function delete()
  local per = tonumber(ARGV[4])
  local i = 5
  local n = 0
  while i <= #ARGV do
    redis.call('XADD', KEYS[3], '*', unpack(ARGV, i + 1, i + per))
    redis.call('HDEL', KEYS[4], ARGV[i])
    i = i + 1 + per
    n = n + 1
  end
  return n
end

-- Fingerprints only (reconcile found PostgreSQL already equal). KEYS[3] the fingerprints;
-- ARGV from 4: field/value pairs.
local function restore()
  if #ARGV > 3 then redis.call('HSET', KEYS[3], unpack(ARGV, 4)) end
  return 0
end

local commands = {append = append, delete = delete, restore = restore}
return commands[ARGV[3]]()
