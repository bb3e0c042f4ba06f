-- ARGV: prefix, queue... Replace any of the queues' wake lists that holds a value of the
-- wrong type (a consumer's BLPOP on it failed). They hold no data: nothing is lost.
for a = 2, #ARGV do
  local w = qkey(ARGV[a], "wake")
  fixed(w, "LLEN", w)
end
return 0
