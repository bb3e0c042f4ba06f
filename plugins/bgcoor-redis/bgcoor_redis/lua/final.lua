-- ARGV: prefix, id. The record's JSON once its status is final, else nil.
local r = readable({}, "HMGET", tkey(ARGV[2]), "s", "j")
if r[1] and is_final(r[1]) then return r[2] end
return nil
