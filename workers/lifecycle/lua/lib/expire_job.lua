-- expire_job(ttl): a finished job's kept keys expire after ttl seconds (0: never), so Redis memory is freed.
-- KEYS: ...kept
local function expire_job(ttl)
  if tonumber(ttl) > 0 then
    for _, key in ipairs(kept) do redis.call('EXPIRE', key, ttl) end
  end
end
