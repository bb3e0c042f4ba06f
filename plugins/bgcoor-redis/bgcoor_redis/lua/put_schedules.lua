-- Insert or replace schedule definitions by id, keeping each existing one's state.
-- ARGV: prefix, then per definition: id, the definition as JSON.
-- A schedule is the hash sched:<id> (see _schedules.py), listed in the sorted set sched
-- (score 0, so members come in id order). A new one starts with since = now (ms); the
-- state fields an existing one has are kept (HSETNX).
local t = redis.call("TIME")
local since = t[1] .. string.format("%03d", math.floor(tonumber(t[2]) / 1000))
local index = P .. ":sched"
for a = 2, #ARGV, 2 do
  local id, key = ARGV[a], P .. ":sched:" .. ARGV[a]
  if type(redis.pcall("HSET", key, "def", ARGV[a + 1])) == "table" then
    -- not a hash (written by something else): no state of ours to keep
    fixed(key, "HSET", key, "def", ARGV[a + 1])
  end
  redis.call("HSETNX", key, "since", since)
  redis.call("HSETNX", key, "paused", "0")
  if type(redis.pcall("ZADD", index, 0, id)) == "table" then fixed(index, "ZADD", index, 0, id) end
end
return 0
