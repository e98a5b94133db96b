"""The producer: reads datasets, cuts prompt shards, runs or enqueues them. Never imports torch."""
