"""The token cache: one fetch per lifetime across threads, refresh before expiry, invalidate."""

from __future__ import annotations

import threading
import time

from shared.maskinporten import TokenCache


def test_one_fetch_for_many_threads():
    calls = []

    def fetch():
        calls.append(1)
        time.sleep(0.05)  # slow issuer: every thread arrives while the first fetch runs
        return f"token-{len(calls)}", time.time() + 600

    cache = TokenCache(fetch)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get())) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert set(results) == {"token-1"}


def test_refreshes_before_expiry_even_for_short_lifetimes():
    issued = []

    def fetch():
        issued.append(time.time())
        return f"t{len(issued)}", time.time() + 1.0  # 1 s lifetime: refresh after 0.9 s

    cache = TokenCache(fetch, margin=60)
    assert cache.get() == "t1"
    assert cache.get() == "t1"  # not refetched at once despite a margin longer than the lifetime
    time.sleep(0.95)
    assert cache.get() == "t2"


def test_invalidate_only_the_token_that_failed():
    n = iter(range(100))
    cache = TokenCache(lambda: (f"t{next(n)}", time.time() + 600))
    first = cache.get()
    cache.invalidate("some-older-token")
    assert cache.get() == first
    cache.invalidate(first)
    assert cache.get() != first
