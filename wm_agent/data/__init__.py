"""Episode data on disk: the shard format, the data policies, collecting shards and reading them back."""
