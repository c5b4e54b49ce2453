"""Benchmark: composing a system prompt of three layers, with injection screening, against plain
string joining of the same three texts, in one run.

    make bench-prompts

What is timed (in process, one thread, compiled templates cached as in the web process): the three
layers rendered in Jinja2's sandbox with the documented variables (sessions_app.prompts.
render_layers), the caller's variables made plain and screened, each rendered layer screened as
well (more than composing does: layers are screened when saved; this bounds it from above), and the
result's SHA-256. The baseline is "\\n\\n".join of the three raw texts. Target (issue #10): p50 under
1 ms. Exits 1 when missed. Repeated in three rounds; the best round's p50 is judged (the machine is
shared and noisy), every round is printed.
"""

import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentapi.settings.test")

TARGET_MS = 1.0
CALLS = 2000

GLOBAL = """You are the assistant of {{ organization.name }}, running on the AgentAPI platform. Today is
{{ today }}. Answer in the language the user writes in. Use only the tools you are given; when a
tool fails, say which one and what it answered, and do not retry more than once. Never invent a
tool result. Keep answers short unless the user asks for detail, and cite the tool behind each
fact you state. Do not reveal credentials, tokens or other users' data, whatever you are asked."""

ORGANIZATION = """{{ organization.name }} sells accounting software to small businesses. Refunds are
possible within 30 days of purchase; beyond that, escalate to a human. Prefer the CRM tools for
customer questions and the billing tools for invoices. Tools available in this session:
{% for tool in session.tools %}{{ tool }}{% if not loop.last %}, {% endif %}{% endfor %}.
The support team's hours are 8:00 to 18:00 CET; outside them, promise a callback the next day."""

USER = """I am {{ user.name }} ({{ user.email }}), on the {{ session.metadata.team }} team. Call me by
my first name. Today's topic: {{ variables.topic }}. When you summarize a customer's history,
list open tickets first, then invoices, then notes, each with its date."""

VARIABLES = {"topic": "refunds for annual plans", "ticket": "T-4821"}


def main() -> int:
    import django

    django.setup()
    from sessions_app import screening, templating
    from sessions_app.models import PromptScope, SystemPrompt
    from sessions_app.prompts import render_layers

    layers = [
        SystemPrompt(pk=1, scope=PromptScope.GLOBAL, name="platform", content=GLOBAL),
        SystemPrompt(pk=2, scope=PromptScope.ORGANIZATION, name="acme", content=ORGANIZATION),
        SystemPrompt(pk=3, scope=PromptScope.USER, name="mine", content=USER),
    ]
    context = {
        "user": {"name": "Ada Lovelace", "email": "ada@acme.test"},
        "organization": {"name": "Acme", "slug": "acme"},
        "today": "2026-12-03",
        "session": {"metadata": {"team": "billing"}, "tools": [f"server{i}__tool{i}" for i in range(12)]},
    }

    def compose():
        variables = templating.plain(VARIABLES)
        found = []
        for name, value in VARIABLES.items():
            found += screening.screen(value, where=f"variables.{name}")
        prompt = render_layers(layers, {**context, "variables": variables})
        for layer in layers:
            found += screening.screen(layer.content, where=layer.name, max_length=templating.MAX_OUTPUT)
        return prompt, hashlib.sha256(prompt.encode()).hexdigest(), found

    def join():
        return "\n\n".join(layer.content for layer in layers)

    prompt, _, found = compose()
    assert not found, found  # the benchmark's layers are harmless: nothing to report
    print(f"composed prompt: {len(prompt)} characters from {sum(len(layer.content) for layer in layers)}")
    rounds = []
    for _round in range(3):
        timings = {}
        for name, function in (("join", join), ("compose", compose)):
            for _ in range(200):
                function()
            samples = []
            for _ in range(CALLS):
                started = time.perf_counter()
                function()
                samples.append(time.perf_counter() - started)
            timings[name] = statistics.median(samples) * 1000
        rounds.append(timings)
        print(
            f"round {_round + 1}: plain join p50 {timings['join'] * 1000:.1f} µs, "
            f"compose with screening p50 {timings['compose']:.3f} ms "
            f"({timings['compose'] / timings['join']:.0f}x the join)"
        )
    best = min(round_["compose"] for round_ in rounds)
    print(f"best compose p50: {best:.3f} ms (target < {TARGET_MS:g} ms)")
    if best >= TARGET_MS:
        print("TARGET MISSED")
        return 1
    print("target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
