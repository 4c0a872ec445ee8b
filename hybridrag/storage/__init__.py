"""Storage of an index on disk: the manifest, segments and their deletions, merges, the
writer lock, safe file opening and disk-full errors."""
