"""The console in a real headless browser (Debian's chromium, driven by Selenium): an operator and
an organization's staff sign in through the admin's form, open the dashboard, follow a figure to
its list, test a configuration against a real MCP server (fastmcp) and close a session; staff never
see another organization's rows. Screenshots of the dashboard and two lists are saved under
var/screenshots/ (the README shows the dashboard's)."""

from datetime import timedelta
from pathlib import Path

from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from audit.models import AuditEvent
from mcp.models import MCPConfiguration
from sessions_app.models import AgentSession
from tenants import scoping
from tenants.models import User
from tests.conftest import committed, make_member
from tests.console.test_dashboard import server
from tests.oauth.test_page import browser, wait_for  # noqa: F401 (the browser fixture)

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"


def sign_in(driver, base: str, email: str, password: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/admin/login/?next=/admin/")
    driver.find_element(By.ID, "id_username").send_keys(email)
    driver.find_element(By.ID, "id_password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    assert wait_for(lambda: "AgentAPI console" in driver.title and "Overview" in driver.title), driver.page_source[
        :2000
    ]


def shot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(1400, 1100)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def run_action(driver, row_text: str, action: str) -> str:
    """Tick the row showing `row_text`, run `action`, return the messages shown."""
    row = driver.find_element(By.XPATH, f"//tr[.//a[normalize-space()='{row_text}']]")
    row.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(driver.find_element(By.NAME, "action")).select_by_value(action)
    driver.find_element(By.NAME, "index").click()
    assert wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "ul.messagelist li"))
    return " ".join(li.text for li in driver.find_elements(By.CSS_SELECTOR, "ul.messagelist li"))


def person(organization, email: str, role: str, *, operator: bool = False) -> str:
    membership = make_member(organization, email, role)
    user = User.objects.get(pk=membership.user_id)
    user.is_staff, user.is_superuser = True, operator
    user.set_password("a long console password 42")
    user.save()
    return "a long console password 42"


@committed
def test_operators_and_staff_use_the_console_in_a_real_browser(live_server, browser, acme, globex, http_server):  # noqa: F811
    operator_password = person(acme, "root@platform.test", "member", operator=True)
    staff_password = person(acme, "staff@acme.test", "admin")
    server(acme, "acme-broken", status="unhealthy", calls=2, failures=3)
    server(globex, "globex-secret-server", calls=4)
    with scoping.organization_scope(acme):
        real = MCPConfiguration.objects.create(organization=acme, name="acme-fastmcp", url=http_server.url)
    now = timezone.now()
    for organization, name in ((acme, "acme-session"), (globex, "globex-session")):
        owner = make_member(organization, f"owner-{name}@x.test", "owner")
        with scoping.organization_scope(organization):
            AgentSession.objects.create(organization=organization, user_id=owner.user_id, name=name, last_active_at=now,
                                        expires_at=now + timedelta(hours=1), ends_at=now + timedelta(hours=8))  # fmt: skip

    # The operator: every organization on the dashboard.
    sign_in(browser, live_server.url, "root@platform.test", operator_password)
    page = browser.page_source
    assert "globex-secret-server" in page and "acme-broken" in page and "Readiness" in page
    shot(browser, "console-dashboard")
    # A figure leads to its list: the failing servers.
    browser.find_element(By.CSS_SELECTOR, '[data-figure="failing"] a').click()
    assert wait_for(lambda: "Select MCP configuration" in browser.title or "MCP configurations" in browser.page_source)
    assert "acme-broken" in browser.page_source and "acme-fastmcp" not in browser.page_source
    shot(browser, "console-servers-failing")
    # Test a configuration: the real server answers.
    browser.get(f"{live_server.url}/admin/mcp/mcpconfiguration/")
    shown = run_action(browser, "acme-fastmcp", "check_configurations")
    assert "acme-fastmcp: healthy" in shown.lower(), shown
    with scoping.organization_scope(acme):
        real.refresh_from_db()
        assert real.status == "healthy"
        assert AuditEvent.objects.filter(action="mcp.configuration.test", outcome="success",
                                         actor_label="root@platform.test").exists()  # fmt: skip
    # Close a session.
    browser.get(f"{live_server.url}/admin/sessions_app/agentsession/")
    shown = run_action(browser, "acme-session", "close_sessions")
    assert "1" in shown, shown
    with scoping.organization_scope(acme):
        assert AgentSession.objects.get(name="acme-session").status == "closed"
    shot(browser, "console-sessions")

    # Staff: their organization only, on the dashboard and in every list they open.
    sign_in(browser, live_server.url, "staff@acme.test", staff_password)
    page = browser.page_source
    assert "acme-broken" in page and "globex" not in page and "Readiness" not in page
    for path in ("/admin/sessions_app/agentsession/", "/admin/mcp/mcpconfiguration/", "/admin/audit/auditevent/"):
        browser.get(live_server.url + path)
        assert "globex" not in browser.page_source, path
    browser.get(f"{live_server.url}/admin/?organization={globex.pk}")
    assert "globex-secret-server" not in browser.page_source
