-- ARGV: prefix, status... Returns the number of live records in each status.
cleanup(now(), -1)
local out = {}
for a = 2, #ARGV do out[#out + 1] = readable(0, "ZCARD", ikey("s", ARGV[a])) end
return out
