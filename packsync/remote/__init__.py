"""Where content goes and comes from: the Genviral Partner API, Astria's API, image URLs.

``transport`` is the one HTTP transport (httpx2: connections, slots, retries, budget, errors),
``genviral`` and ``astria`` are the API clients that speak through it, ``answers`` turns Genviral's
JSON answers into typed values or one-sentence errors, and ``retry`` is the one backoff every retry in
packsync uses.
"""
