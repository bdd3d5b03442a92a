"""Run-directory plumbing: atomic writes, the run lock, fault injection, host description, progress lines."""
