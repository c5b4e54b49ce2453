"""Single flight: 50 concurrent calls that find the same expired token cause exactly one refresh at
the provider, and all 50 use the new token. Threads have their own database connections, so the
rows here really commit."""

import datetime
import threading

from django.db import connection
from django.test import Client
from django.utils import timezone

from oauth import services
from oauth.models import OAuthToken
from tenants import scoping
from tests.conftest import Api, committed, make_key
from tests.oauth.conftest import connect, make_provider


@committed
def test_fifty_concurrent_calls_refresh_once_and_all_get_the_new_token(alice, acme, oauth_server):
    api = Api(make_key(alice))
    provider = make_provider(api, oauth_server)
    connect(api, Client(), provider=provider["id"])
    with scoping.organization_scope(acme):
        token = OAuthToken.objects.select_related("provider").get()
        old = token.access_token()
        OAuthToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    results, errors = [], []
    barrier = threading.Barrier(50)

    def call():
        try:
            barrier.wait(10)
            with scoping.organization_scope(acme):
                results.append(services.access_token_for(user_id=alice.user_id, provider=token.provider)[0])
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=call) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(results) == 50 and len(set(results)) == 1 and results[0] != old
    assert oauth_server.stats()["token:refresh_token"] == 1
