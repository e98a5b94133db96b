-- reap: re-arm an expired lease as sent again by the reaper (its worker was lost, or its back-off ended).
-- KEYS: leases expiry job requeued
-- ARGV: index seconds
-- USES: now rearm
-- Returns the lease to send again, or nil.
local expires = redis.call('ZSCORE', expiry, index)
local held = redis.call('HGET', leases, index)
if not expires or not held or tonumber(expires) > now then return false end
return rearm(index, cjson.decode(held), seconds)
