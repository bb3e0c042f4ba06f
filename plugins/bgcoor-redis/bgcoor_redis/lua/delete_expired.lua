-- ARGV: prefix. Removes every record whose TTL has passed; returns how many.
return cleanup(now(), -1)
