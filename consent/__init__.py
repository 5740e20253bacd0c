"""Consent: consent tokens (issue/verify), revocation, and the consent and audit ledger.

Consent tokens are Ed25519 JWTs with ``typ`` ``sfu-consent+jwt`` (claims in protocol.md,
"Tokens"), verified with :func:`sfu.tokens.verify_jwt`; revoked ``jti``s are refused and
verification fails closed when revocation state cannot be read. The ledger is append-only and
hash-chained (embedded SQLite, Redis streams in a cluster).

Placeholder: this package is built in a later issue.
"""
