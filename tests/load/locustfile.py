"""The six load scenarios of the seeds' suite (issue #12), for locust; tests/load/run.py (`make load`)
prepares the data, serves the platform and runs each one.

    LOAD_SCENARIO   auth | connect | tools | lists | disconnect | mixed | hello
    LOAD_DATA       the JSON file run.py wrote: users (each its API key, JWT, session, OAuth
                    connection), the MCP configuration, the OAuth provider
    LOAD_TIME_SCALE seconds per minute of the seeds' stages (default 10: a 9-minute scenario runs
                    in 90 seconds)

Each virtual user is one of the organization's users (its own credential, so that no user's rate
limit is what is measured) and makes about one request a second, as the seeds' k6 users did.
"""

import json
import os
import random
import threading
import time
import uuid
from urllib.parse import parse_qs, urlsplit

from locust import FastHttpUser, LoadTestShape, constant_throughput, task

SCENARIO = os.environ.get("LOAD_SCENARIO", "hello")
DATA = json.loads(open(os.environ["LOAD_DATA"]).read()) if os.environ.get("LOAD_DATA") else {"users": []}
SCALE = float(os.environ.get("LOAD_TIME_SCALE", "10"))

# The seeds' stages, (minutes, users at the end of the stage), ramps linear.
STAGES = {
    "auth": [(2, 50), (3, 50), (2, 100), (2, 0)],
    "connect": [(2, 25), (3, 25), (1, 50), (2, 0)],
    "tools": [(2, 100), (3, 100), (2, 200), (2, 0)],
    "lists": [(2, 75), (3, 75), (1, 150), (2, 0)],
    "disconnect": [(2, 25), (3, 25), (1, 50), (1, 0)],
    "mixed": [(2, 150), (3, 150), (2, 300), (4, 300), (2, 0)],
    "hello": [(2, 150), (3, 150), (2, 300), (4, 300), (2, 0)],  # the mixed workload's shape
}


class StagedShape(LoadTestShape):
    """The scenario's stages, each `SCALE` seconds a minute; users move linearly within a stage."""

    def tick(self):
        elapsed = self.get_run_time()
        users, start = 0, 0.0
        for minutes, target in STAGES[SCENARIO]:
            length = minutes * SCALE
            if elapsed < start + length:
                current = users + (target - users) * (elapsed - start) / length
                return max(1, round(current)), 50
            users, start = target, start + length
        return None


_next = iter(range(10**9))
_lock = threading.Lock()


class PlatformUser(FastHttpUser):
    wait_time = constant_throughput(1)

    def on_start(self):
        with _lock:
            index = next(_next)
        users = DATA["users"]
        self.me = users[index % len(users)] if users else {}
        self.turn = 0
        self.key_headers = {"Authorization": f"Bearer {self.me.get('key', '')}"}
        self.jwt_headers = {"Authorization": f"Bearer {self.me.get('jwt', '')}"}

    # -- requests, named as the report shows them ---------------------------------------------

    def _get(self, path, name, headers=None):
        return self.client.get(path, name=name, headers=headers or self.key_headers)

    def _post(self, path, body, name, headers=None):
        return self.client.post(path, json=body, name=name, headers=headers or self.key_headers)

    def status(self):
        self._get(f"/agentapi/sessions/{self.me['session']}/status", "GET /agentapi/sessions/{id}/status")

    def read_messages(self):
        self._get(f"/api/v1/sessions/{self.me['session']}/messages/", "GET /api/v1/sessions/{id}/messages/")

    def send_message(self):
        # A session answers one message at a time: the user takes turns among its sessions, so a
        # session gets a message every few seconds (its answer, from the model double, takes well
        # under one when the worker keeps up; a 409 session_busy here means it did not).
        session = self.me["sessions"][self.turn % len(self.me["sessions"])]
        self.turn += 1
        self._post(f"/api/v1/sessions/{session}/messages/", {"content": "Hello, double."},
                   "POST /api/v1/sessions/{id}/messages/")  # fmt: skip

    def oauth_authorize(self):
        self._post("/api/v1/oauth/authorize/", {"provider": DATA["provider"]}, "POST /api/v1/oauth/authorize/")

    def token_refresh(self):
        self._post(f"/api/v1/oauth/tokens/{self.me['token']}/refresh/", {}, "POST /api/v1/oauth/tokens/{id}/refresh/")

    def subscribe(self):
        """An event-stream subscriber: connects, reads the stream's first event, leaves. Its time is
        the time to that first event."""
        path = f"/api/v1/sessions/{self.me['session']}/events/"
        started = time.perf_counter()
        with self.client.get(path, name="GET /api/v1/sessions/{id}/events/ (first event)", headers=self.key_headers,
                             stream=True, catch_response=True) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return
            seen = b""
            # Small reads: a larger one would wait for that many bytes (the next heartbeat).
            for chunk in response.iter_content(chunk_size=32, decode_content=False):
                seen += chunk
                if b"\ndata:" in seen or seen.startswith(b"data:"):
                    response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
                    response.success()
                    return
                if len(seen) > 65536:
                    break
            response.failure("no event in the stream's first 64 KB")

    def open_session(self) -> str | None:
        response = self._post("/api/v1/sessions/", {"name": f"load-{uuid.uuid4().hex[:8]}",
                                                    "mcp_configurations": [DATA["configuration"]]},
                              "POST /api/v1/sessions/")  # fmt: skip
        return response.json()["id"] if response.status_code == 201 else None

    def close_session(self, session: str) -> None:
        self.client.delete(f"/api/v1/sessions/{session}/", name="DELETE /api/v1/sessions/{id}/",
                           headers=self.key_headers)  # fmt: skip

    def connect_oauth(self) -> int | None:
        """The whole connection flow: authorize, the provider's consent (fastmcp grants at once),
        the callback page."""
        started = self._post(
            "/api/v1/oauth/authorize/", {"provider": DATA["provider"]}, "POST /api/v1/oauth/authorize/"
        )
        if started.status_code != 200:
            return None
        consent = self.client.get(started.json()["authorization_url"], name="provider: consent (not the platform)",
                                  allow_redirects=False)  # fmt: skip
        query = parse_qs(urlsplit(consent.headers.get("location", "")).query)
        page = self.client.get("/oauth/callback/", params={k: v[0] for k, v in query.items()},
                               name="GET /oauth/callback/")  # fmt: skip
        if page.status_code != 200:
            return None
        tokens = self._get("/api/v1/oauth/tokens/", "GET /api/v1/oauth/tokens/").json()
        found = [t["id"] for t in tokens.get("results", tokens) if t.get("provider") == DATA["provider"]]
        return found[0] if found else None

    # -- the scenarios -------------------------------------------------------------------------

    @task
    def scenario(self):
        getattr(self, f"scenario_{SCENARIO}")()

    def scenario_hello(self):
        self.client.get("/bench/hello/", name="GET /bench/hello/ (hello-world)")

    def scenario_auth(self):
        if random.random() < 0.5:
            self._get("/api/v1/me/", "GET /api/v1/me/ (API key)")
        else:
            self._get("/api/v1/me/", "GET /api/v1/me/ (JWT)", headers=self.jwt_headers)

    def scenario_connect(self):
        session = self.open_session()
        if session is not None:
            self._get(f"/api/v1/sessions/{session}/tools/", "GET /api/v1/sessions/{id}/tools/")
            self.close_session(session)

    def scenario_tools(self):
        self._post(f"/api/v1/sessions/{self.me['session']}/tools/call/",
                   {"name": DATA["tool"], "arguments": {"text": "load"}}, "POST /api/v1/sessions/{id}/tools/call/")  # fmt: skip

    def scenario_lists(self):
        choice = random.random()
        if choice < 0.25:
            self._get("/api/v1/sessions/", "GET /api/v1/sessions/")
        elif choice < 0.5:
            self.read_messages()
        elif choice < 0.75:
            # The audit log is the owners' and admins' to read: the organization's owner reads it.
            self._get("/api/v1/audit/events/", "GET /api/v1/audit/events/ (owner)",
                      headers={"Authorization": f"Bearer {DATA['owner_key']}"})  # fmt: skip
        else:
            self._get("/api/v1/oauth/tokens/", "GET /api/v1/oauth/tokens/")

    def scenario_disconnect(self):
        session = self.open_session()
        if session is not None:
            self.close_session(session)
        token = self.connect_oauth()
        if token is not None:
            self.client.delete(f"/api/v1/oauth/tokens/{token}/", name="DELETE /api/v1/oauth/tokens/{id}/",
                               headers=self.key_headers)  # fmt: skip

    def scenario_mixed(self):
        choice = random.random()
        if choice < 0.30:
            self.status()
        elif choice < 0.50:
            self.read_messages()
        elif choice < 0.70:
            self.send_message()
        elif choice < 0.85:
            self.oauth_authorize()
        elif choice < 0.95:
            self.token_refresh()
        else:
            self.subscribe()
