"""Tasks: models, registry, submission, status, the worker and their storage."""
