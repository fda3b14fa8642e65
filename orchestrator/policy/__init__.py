"""policy: pure decisions with no I/O (restart strategy, intensity and backoff, the reload
plan). Imports only spec and below."""
