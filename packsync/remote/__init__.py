"""Where content goes: the Genviral Partner API.

``genviral`` is the client (requests, slots, retries), ``answers`` turns its JSON answers into typed
values or one-sentence errors, and ``retry`` is the one backoff every retry in packsync uses.
"""
