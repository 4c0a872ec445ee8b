"""Storage of an index on disk: the manifest, segments and their deletions, merges, the lock."""
