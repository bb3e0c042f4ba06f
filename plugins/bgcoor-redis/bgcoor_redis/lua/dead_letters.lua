-- ARGV: prefix, queue, offset, limit. Returns id, body, reason, dead_at per dead letter,
-- oldest first.
local queue, offset, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
-- A dead letter whose hash cannot be read comes back with no body, reason or time.
for _, id in ipairs(readable({}, "ZRANGE", qkey(queue, "dead"), offset, offset + limit - 1)) do
  local m = readable({}, "HMGET", mkey(id), "b", "r", "x")
  out[#out + 1] = id
  out[#out + 1] = m[1]
  out[#out + 1] = m[2]
  out[#out + 1] = m[3]
end
return out
