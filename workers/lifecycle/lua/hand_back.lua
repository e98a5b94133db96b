-- hand_back: a worker that is stopping (SIGTERM) gives its shard back at once.
-- KEYS: leases expiry job requeued deliveries
-- ARGV: index token seconds delivery
-- USES: now rearm
-- If the lease is still ours and running, it is re-armed as sent again (as reap does for a lost worker, but at
-- once) and this delivery is taken back: a stopped worker says nothing against its shard, so preemptions never
-- make a poison shard. delivery: the step's name, as begin had it. Returns the lease to send again, or nil.
local held = redis.call('HGET', leases, index)
if not held then return false end
local lease = cjson.decode(held)
if lease.token ~= token or lease.state ~= 'running' then return false end
local field = delivery .. ':' .. index
if tonumber(redis.call('HGET', deliveries, field) or '0') > 0 then redis.call('HINCRBY', deliveries, field, -1) end
return rearm(index, lease, seconds)
