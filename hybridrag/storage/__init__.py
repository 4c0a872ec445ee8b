"""How an index's files are written and guarded on disk: the writer lock (``lock.py``) and safe file opening plus disk-full errors (``files.py``)."""
