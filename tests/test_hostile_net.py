"""Hostile servers: an answer that trickles in, a redirect to the machine's own services, a rate limit.

Every request packsync makes — each API call and download, Genviral's and Astria's — ends within a
total deadline made of the read timeout (``[genviral] timeout_s``, short here), whatever the server
does with its head or its body; a download follows redirects only to where its first URL could reach
already; Astria's 429 is waited out like Genviral's. All against the sandbox, over HTTP on loopback.
"""

from __future__ import annotations

import time

import pytest
from conftest import Env, image, write
from test_astria import astria_pack

from packsync.errors import ApiError, ExitCode

#: The read timeout of these tests (30 s in the product): a trickle is judged within a few of them.
TIMEOUT_S = 0.5


def slow_env(env: Env) -> Env:
    env.genviral["timeout_s"] = TIMEOUT_S
    env.sandbox.faults.trickle_s = TIMEOUT_S / 5  # never long enough for one read to time out
    return env


TRICKLED = [("trickle-body", "GET", "astria:/p/{id}"), ("trickle-head", "GET", "astria:/p/{id}"),
            ("trickle-body", "GET", "astria-img"), ("trickle-head", "GET", "astria-img"),
            ("trickle-body", "GET", "/packs"), ("trickle-head", "GET", "/packs"),
            ("trickle-head", "POST", "/files"), ("trickle-head", "PUT", "storage")]


@pytest.mark.parametrize(("kind", "method", "route"), TRICKLED, ids=[f"{k} {m} {r}" for k, m, r in TRICKLED])
def test_a_trickling_answer_ends_the_run_within_its_deadline(env: Env, kind: str, method: str, route: str) -> None:
    """A server sending its head or its body a byte at a time, never slowly enough for a read to time out,
    costs one attempt of a few read timeouts: each attempt has a total deadline, and a trickle is not
    tried again (a download's or an API call's, Astria's or Genviral's)."""
    slow_env(env)
    pack_id, _urls = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    env.sandbox.inject(kind, method, route, count=1000)
    started = time.monotonic()

    try:
        report = env.sync()
    except ApiError as exc:  # the pack list itself: the sync as a whole fails, in its sentence
        said = str(exc)
    else:
        assert report.exit_code == ExitCode.SOME_FAILED
        said = " ".join(filter(None, [m.last_error or "" for m in report.mappings]
                               + [p.reason for m in report.mappings for p in m.problems]))

    took = time.monotonic() - started
    assert took < 7 * TIMEOUT_S + 1, f"the sync took {took:.1f} s"
    assert env.sandbox.calls[(method, route)] == 1, "given up, not tried again"
    assert "too slow" in said, said


def test_an_astria_429_is_waited_out_as_its_retry_after_says(env: Env) -> None:
    """Astria answering 429 (with Retry-After: 1) is a pause, then the same request again."""
    pack_id, urls = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    env.sandbox.inject("429", "GET", "astria:/p/{id}", count=2)
    env.sandbox.inject("429", "GET", "astria-img", count=1)
    started = time.monotonic()

    report = env.sync()

    assert report.exit_code == ExitCode.OK, [m.last_error for m in report.mappings]
    assert time.monotonic() - started >= 3 * 0.9, "each Retry-After of 1 s waited out"
    assert env.sandbox.calls[("GET", "astria:/p/{id}")] == 3
    assert len(env.pack_named("Headshots")["images"]) == len(urls)


def test_an_astria_pack_rate_limited_throughout_is_an_error_retried_not_a_safety_stop(env: Env) -> None:
    """A pack Astria will not answer now (429 at every attempt) is that mapping's error, tried again later
    (the daemon's backoff, the next run): a safety stop is for a source that is gone, and is not retried.
    Nothing is deleted meanwhile, and the folder beside it syncs."""
    pack_id, urls = astria_pack(env, {"woman": 2})
    label = env.map_astria(pack_id, pack="Headshots")
    folder = env.map("photos", pack="Photos")
    write(folder / "a.png", image(seed=7))
    assert env.sync().exit_code == ExitCode.OK
    env.sandbox.inject("429", "GET", "astria:/p/{id}", count=1000)
    write(folder / "b.png", image(seed=8))

    report = env.sync()

    astria = next(m for m in report.mappings if m.label == label)
    assert report.exit_code == ExitCode.SOME_FAILED
    assert astria.safety is None
    assert astria.error and "rate limited (429)" in astria.error, astria.error
    assert len(env.pack_named("Headshots")["images"]) == len(urls), "nothing deleted"
    assert len(env.pack_named("Photos")["images"]) == 2
