"""Built-in exchange profiles: one module per exchange product, each exporting `PROFILE`.

Every number comes from /work/shared/exchange-limits.md with its source URL (in the limit's
`source` and a comment beside it). Limits no exchange publishes get a conservative ASSUMED
value with a note explaining it: unknown is never unlimited.
"""
