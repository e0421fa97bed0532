"""The pure core: the execution model and its rules, ids, and JSON encoding.

Nothing here does I/O or reads a clock: every function takes what it needs (the current
record, the event, the time) and returns what follows, for a store to commit.
"""
