"""The connections page for signed-in users: listed providers, status, disconnect; and the whole
connect flow in a real headless browser (Debian's chromium, driven by Selenium): the popup, the
provider's redirect, the callback telling its opener, the page showing the result."""

import time

import pytest
from django.test import Client
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from oauth.models import OAuthToken
from tenants import scoping
from tenants.models import User
from tests.conftest import Api, committed, make_key
from tests.oauth.conftest import connect, make_provider, register_client


def signed_in(user_id) -> Client:
    client = Client()
    client.force_login(User.objects.get(pk=user_id))
    return client


def test_the_page_lists_providers_and_connections_and_disconnects(alice_api, alice, bob, acme, oauth_server):
    provider = make_provider(alice_api, oauth_server, name="loopback-idp")
    page = signed_in(alice.user_id).get("/account/connections/")
    assert (
        page.status_code == 200 and "loopback-idp" in page.content.decode() and "Not connected" in page.content.decode()
    )
    connect(alice_api, Client(), provider=provider["id"])
    client = signed_in(alice.user_id)
    page = client.get("/account/connections/").content.decode()
    assert "Active" in page and "test_access" not in page
    with scoping.organization_scope(acme):
        token = OAuthToken.objects.get()
    # Bob cannot disconnect alice's connection from his page.
    assert signed_in(bob.user_id).post("/account/connections/", {"connection": token.pk}).status_code == 400
    assert client.post("/account/connections/", {"connection": token.pk}).status_code == 302
    assert "Revoked" in client.get("/account/connections/").content.decode()
    assert Client().get("/account/connections/").status_code == 302  # signed-in users only


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # the page may be reloading
            pass
        time.sleep(0.2)
    return False


def status_text(browser, provider_id) -> str:
    return browser.find_element(By.CSS_SELECTOR, f'tr[data-provider="{provider_id}"] td.status').text


@committed
def test_a_user_connects_and_disconnects_in_a_real_browser(live_server, browser, alice, acme, oauth_server, settings):
    api = Api(make_key(alice))
    client = register_client(oauth_server, redirect_uri=f"{live_server.url}/oauth/callback/")
    provider = api.post("/api/v1/oauth/providers/", {
        "name": "browser-idp", "kind": "oauth2", "client_id": client["client_id"], "client_secret": client["client_secret"],
        "authorization_endpoint": f"{oauth_server.base}/authorize", "token_endpoint": f"{oauth_server.base}/token",
        "revocation_endpoint": f"{oauth_server.base}/revoke",
    }).json()  # fmt: skip
    session = signed_in(alice.user_id).cookies["sessionid"].value
    browser.get(f"{live_server.url}/health/live/")
    browser.add_cookie({"name": "sessionid", "value": session, "path": "/"})
    browser.get(f"{live_server.url}/account/connections/")
    assert status_text(browser, provider["id"]) == "Not connected"
    browser.find_element(By.CSS_SELECTOR, f'button.connect[data-provider="{provider["id"]}"]').click()
    if not wait_for(lambda: status_text(browser, provider["id"]) == "Active"):
        handles = browser.window_handles
        details = [browser.get_log("browser")]
        for handle in handles:
            browser.switch_to.window(handle)
            details.append((browser.current_url, browser.page_source[:1500]))
        raise AssertionError(details)
    assert len(browser.window_handles) == 2  # the popup showed the result to the person too
    opener = browser.current_window_handle
    browser.switch_to.window([h for h in browser.window_handles if h != opener][0])
    assert "Connected" in browser.page_source
    browser.close()
    browser.switch_to.window(opener)
    with scoping.organization_scope(acme):
        assert OAuthToken.objects.get().status == "active"
    browser.find_element(By.CSS_SELECTOR, "button.disconnect").click()
    assert wait_for(lambda: status_text(browser, provider["id"]) == "Revoked"), (
        browser.current_url,
        browser.page_source[:2500],
    )
    assert oauth_server.stats()["revoke:request"] == 2
