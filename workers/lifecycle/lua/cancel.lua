-- cancel: workers skip a running job's remaining tasks; its keys expire.
-- KEYS: job active ...kept
-- ARGV: ttl
-- USES: expire_job
-- Returns 'running' when cancelled, else the job's status (refused).
local status = redis.call('HGET', job, 'status')
if status ~= 'running' then return status or 'unknown' end
redis.call('HSET', job, 'status', 'cancelled')
redis.call('SREM', active, job)
expire_job(ttl)
return 'running'
