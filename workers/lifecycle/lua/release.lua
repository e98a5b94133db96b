-- release: drop the lease if it is ours (after the next step's task was sent).
-- KEYS: leases expiry
-- ARGV: index token
-- USES: drop_if_ours
drop_if_ours(index, token)
return 1
