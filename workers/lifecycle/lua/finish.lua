-- finish: mark a running job finished, its keys to expire.
-- KEYS: job active ...kept
-- ARGV: ttl status finished output
-- USES: expire_job
-- kept: the job's kept keys (Keys.kept); ttl: SAMPLEFLEET_FINISHED_TTL. Returns 0 when the job was not running.
if redis.call('HGET', job, 'status') ~= 'running' then return 0 end
redis.call('HSET', job, 'status', status, 'finished', finished, 'output', output)
redis.call('SREM', active, job)
expire_job(ttl)
return 1
