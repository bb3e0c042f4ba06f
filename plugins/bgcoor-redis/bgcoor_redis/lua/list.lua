-- Records matching every filter, ordered by id, after `after`, at most `limit`: for each,
-- its JSON and its r and k fields (false when absent; see common.lua).
-- ARGV: prefix, status, name, queue ("" for no filter), after ("" for the start), limit.
-- Walks the smallest index among the filters and checks the others on each record.
local want = {s = ARGV[2], n = ARGV[3], q = ARGV[4]}
local from, limit = ARGV[5], tonumber(ARGV[6])
cleanup(now(), -1)
local index, size = ALL, redis.call("ZCARD", ALL)
for kind, value in pairs(want) do
  if value ~= "" then
    local key = ikey(kind, value)
    local n = redis.call("ZCARD", key)
    if n < size then index, size = key, n end
  end
end
local out = {}
local start = from == "" and "-" or "(" .. from
local page = math.max(limit, 100)
while true do
  local ids = redis.call("ZRANGEBYLEX", index, start, "+", "LIMIT", 0, page)
  for _, id in ipairs(ids) do
    local r = redis.call("HMGET", tkey(id), "s", "n", "q", "j", "r", "k")
    if r[1] and (want.s == "" or r[1] == want.s) and (want.n == "" or r[2] == want.n)
        and (want.q == "" or r[3] == want.q) then
      out[#out + 1] = r[4]
      out[#out + 1] = r[5]
      out[#out + 1] = r[6]
      if #out >= 3 * limit then return out end
    end
  end
  if #ids < page then return out end
  start = "(" .. ids[#ids]
end
