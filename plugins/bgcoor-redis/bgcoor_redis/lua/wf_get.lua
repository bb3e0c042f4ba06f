-- ARGV: prefix, workflow id. The workflow's hash as field, value pairs ({} for none), or
-- {why} (one item, so never a hash's pairs) if it is not a hash.
local W = wf_key(ARGV[2])
local r = redis.pcall("HGETALL", W)
if r.err then return {W .. " is not a hash"} end
return r
