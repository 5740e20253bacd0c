"""Consent: consent tokens (issue/verify), revocation, and the consent and audit ledger.

* :mod:`consent.tokens`: Ed25519 JWTs with ``typ`` ``sfu-consent+jwt`` (claims in protocol.md,
  "Tokens"); :func:`~consent.tokens.verify_consent_token` is async and fails closed.
* :mod:`consent.revocation`: revoked ``jti``s, embedded (SQLite) or in Redis, with push
  notifications so recordings stop at once.
* :mod:`consent.ledger` (model and checks), :mod:`consent.ledger_sqlite`,
  :mod:`consent.ledger_redis`: the append-only, hash-chained record of consent and recordings;
  :mod:`consent.audit` is ``python -m sfu audit verify``.
"""
