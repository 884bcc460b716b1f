"""``voiced broker``: a small HTTP token service that holds the OpenAI API key and mints
short-lived Realtime client secrets for registered devices, so a kiosk never holds the key.

A device sends ``POST /v1/token`` with its device token (``Authorization: Bearer vdt_...``) and
gets ``{"value": "ek_...", "expires_at": ...}``, minted upstream for a model, voice and
instructions the broker allows (``broker.allowed``). The pieces:

- `voiced.broker.policy`: what a request may ask for, and the refusals (pure logic);
- `voiced.broker.store`: the devices (token hashes only) and the mints, in one SQLite file
  several broker processes on one host may share (the rate limit is counted there);
- `voiced.broker.app`: the ASGI application (`build_app`);
- `voiced.broker.serve`: hypercorn under trio, TLS when configured (`serve`);
- `voiced.broker.command`: the ``voiced broker`` command line (`add_parser`, `run`).

Secrets (the API key, device tokens, minted secrets) never appear in a log line, a ``repr`` or
an exception.
"""

from __future__ import annotations
