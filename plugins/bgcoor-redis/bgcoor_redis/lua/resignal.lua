-- Re-issue wake-ups a cancelled blocking consumer may have swallowed.
-- ARGV: prefix, queue...
for q = 2, #ARGV do
  if redis.call("ZCARD", qkey(ARGV[q], "ready")) > 0 then wake(ARGV[q]) end
end
return 0
