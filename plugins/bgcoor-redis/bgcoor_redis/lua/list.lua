-- Records matching every filter, ordered by id, after `after`, at most `limit`: for each,
-- its id, status, JSON and its r and k fields (false when absent; see common.lua). A
-- record key that is not a hash comes back (unfiltered lists only) with status false.
-- ARGV: prefix, status, name, queue ("" for no filter), after ("" for the start), limit.
-- Walks the smallest index among the filters and checks the others on each record.
local want = {s = ARGV[2], n = ARGV[3], q = ARGV[4]}
local from, limit = ARGV[5], tonumber(ARGV[6])
local filtered = want.s ~= "" or want.n ~= "" or want.q ~= ""
cleanup(now(), -1)
local index, size = ALL, readable(0, "ZCARD", ALL)
for kind, value in pairs(want) do
  if value ~= "" then
    local key = ikey(kind, value)
    local n = readable(0, "ZCARD", key)
    if n < size then index, size = key, n end
  end
end
local out = {}
local start = from == "" and "-" or "(" .. from
local page = math.max(limit, 100)
while true do
  local ids = readable({}, "ZRANGEBYLEX", index, start, "+", "LIMIT", 0, page)
  for _, id in ipairs(ids) do
    local r = redis.pcall("HMGET", tkey(id), "s", "n", "q", "j", "r", "k")
    if r.err then
      r = filtered and {} or {"", "", "", false, false, false}
      r.bad = true
    end
    if r[1] and (want.s == "" or r[1] == want.s) and (want.n == "" or r[2] == want.n)
        and (want.q == "" or r[3] == want.q) then
      out[#out + 1] = id
      out[#out + 1] = r.bad and false or r[1]
      out[#out + 1] = r[4]
      out[#out + 1] = r[5]
      out[#out + 1] = r[6]
      if #out >= 5 * limit then return out end
    end
  end
  if #ids < page then return out end
  start = "(" .. ids[#ids]
end
