"""Summary statistics of finite floats: exact summaries and mergeable partial summaries.

`summary.summarize` answers `analytics.summary`; `partials` splits the same summary
into chunk partials and merges them. See docs/analytics.md for the guarantees.
"""
