"""Benchmark: finding and decrypting a user's OAuth token for an MCP call.

    .venv/bin/python tests/services.py -- .venv/bin/python tests/benchmarks/bench_oauth.py

In one run, on real PostgreSQL: the platform's lookup (`oauth.services.access_token_for`, warm, as
every call after the first in a process finds it) against the baseline of the work it cannot avoid,
one AES-256-GCM decryption of a token of the same size with a key already in memory. Also printed
for context: the same lookup when the process has no copy (a database read and the data key's
unwrapping). Target (issue #4): the warm lookup under 50 µs at p50.
"""

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "agentapi.settings.test"
N = int(os.environ.get("BENCH_LOOKUPS", "20000"))


def timed(function, n) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        function()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def main():
    import django

    django.setup()
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from oauth import services
    from oauth.models import OAuthProvider, OAuthToken
    from tenants import scoping, secrets
    from tenants import services as tenant_services
    from tests.benchmarks.bench_api import BENCH_SETTINGS

    organization = tenant_services.organization_create(
        slug=f"bench-oauth-{os.getpid()}", name="Bench", settings=BENCH_SETTINGS
    )
    with scoping.organization_scope(organization):
        member = tenant_services.membership_create(
            organization=organization, email=f"{organization.slug}@b.test", role="owner"
        )
        provider = OAuthProvider.objects.create(
            organization=organization, name="p", kind="oauth2", client_id="c",
            authorization_endpoint="https://idp.example.com/a", token_endpoint="https://idp.example.com/t",
        )  # fmt: skip
        token = OAuthToken(organization=organization, user_id=member.user_id, provider=provider)
        access = "gho_" + "x" * 36
        token.set_tokens(access_token=access, refresh_token="r")
        token.expires_at = None
        token.save()

        key, nonce = AESGCM.generate_key(256), os.urandom(12)
        cipher = AESGCM(key)
        sealed = cipher.encrypt(nonce, access.encode(), b"aad")
        baseline = timed(lambda: cipher.decrypt(nonce, sealed, b"aad").decode(), N)

        def cold():
            services._token_cache.clear()
            secrets.forget_cached_keys()
            services.access_token_for(user_id=member.user_id, provider=provider)

        cold_samples = timed(cold, 300)
        assert services.access_token_for(user_id=member.user_id, provider=provider)[0] == access
        warm = timed(lambda: services.access_token_for(user_id=member.user_id, provider=provider), N)

    base_p50, warm_p50 = statistics.median(baseline), statistics.median(warm)
    print(f"\n{'lookup':52}{'p50':>10}{'p90':>10}")
    for name, samples in (
        ("baseline: one AES-256-GCM decryption", baseline),
        ("access_token_for, warm (every call but the first)", warm),
        ("access_token_for, cold (database and data key)", cold_samples),
    ):
        ordered = sorted(samples)
        print(f"{name:52}{statistics.median(samples):>7.1f} µs{ordered[int(len(ordered) * 0.9)]:>7.1f} µs")
    print(f"\nwarm / baseline p50: {warm_p50 / base_p50:.1f}x")
    ok = warm_p50 < 50
    print(f"warm lookup p50 {warm_p50:.1f} µs (target < 50 µs): {'met' if ok else 'MISSED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
