-- renew: push the lease's expiry on while it is ours.
-- KEYS: leases expiry
-- ARGV: index token seconds
-- USES: now
-- Returns 1 while the lease is ours, 0 once it is not (dropped, or re-armed by the reaper).
local held = redis.call('HGET', leases, index)
if not held then return 0 end
local lease = cjson.decode(held)
if lease.token ~= token or lease.state == 'requeued' then return 0 end
redis.call('ZADD', expiry, now + tonumber(seconds), index)
return 1
