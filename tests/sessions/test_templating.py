"""Prompt templates (sessions_app.templating): Jinja2's sandbox with what it leaves to its users
bounded: escapes refused, undefined variables named, time, size and nesting limited."""

import time

import pytest

from sessions_app.templating import MAX_OUTPUT, TemplateProblem, check, plain, render

VARIABLES = {
    "user": {"name": "Ada", "email": "ada@example.com"},
    "organization": {"name": "Acme", "slug": "acme"},
    "today": "2026-12-03",
    "session": {"metadata": {"team": "billing"}, "tools": ["crm__search", "mail__send"]},
    "variables": {"topic": "refunds"},
}


@pytest.mark.parametrize(
    "source, expected",
    [
        ("Hello {{ user.name }} of {{ organization.name|upper }}.", "Hello Ada of ACME."),
        ("Tools: {{ session.tools|join(', ') }}", "Tools: crm__search, mail__send"),
        ("{% for t in session.tools %}- {{ t }}\n{% endfor %}", "- crm__search\n- mail__send\n"),
        ("{% if variables.topic == 'refunds' %}R{% else %}X{% endif %}{{ range(3)|list }}", "R[0, 1, 2]"),
        ("{% macro tool(t) %}[{{ t }}]{% endmacro %}{% for t in session.tools %}{{ tool(t) }}{% endfor %}",
         "[crm__search][mail__send]"),
        ("{{ session.metadata.get('team') ~ '/' ~ today }} {{ 'a b'.split()|length }}", "billing/2026-12-03 2"),
        ("{{ variables.missing|default('none') }} {{ 'ab' * 2 }} {{ 2 ** 10 }}", "none abab 1024"),
    ],
)  # fmt: skip
def test_templates_render_with_the_documented_variables(source, expected):
    check(source)
    assert render(source, VARIABLES) == expected


@pytest.mark.parametrize(
    "source, code",
    [
        # reaching Python from a template
        ("{{ ''.__class__ }}", "template_refused"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "template_refused"),
        ("{{ user.__init__.__globals__ }}", "template_refused"),
        ("{{ session.tools.append('x') }}", "template_refused"),
        ("{{ session.metadata.update({'a': 1}) }}", "template_refused"),
        ("{{ 'abc'.format(1) }}", "template_refused"),
        ("{{ '%s' % user }}", "template_refused"),
        ("{{ namespace(a=1) }}", "template_refused"),
        ("{{ lipsum() }}", "template_refused"),
        ("{% include 'settings.py' %}", "template_refused"),
        ("{% extends '/etc/passwd' %}", "template_refused"),
        ("{{ config }}", "undefined_variable"),
        ("{{ cycler }}", "undefined_variable"),
        # making too much
        ("{{ 'x' * 1000000 }}", "template_limit"),
        ("{{ 2 ** 100000 }}", "template_limit"),
        ("{{ (range(1000)|list) * 1000 }}", "template_limit"),
        ("{{ range(10**6)|list }}", "template_limit"),
        ("{{ ('x' * 1000)|replace('x', 'y' * 1000) }}", "template_limit"),
        ("{{ ('x\\n' * 100)|indent(99999) }}", "template_limit"),
        ("{% set a = 'x' * 1000 %}{% set b = a~a~a~a~a~a~a~a~a~a %}{% set c = b~b~b~b~b~b~b~b~b~b~b %}{{ c }}",
         "template_limit"),
        ("{% for a in range(1000) %}{% for b in range(1000) %}{{ 'x' * 100 }}{% endfor %}{% endfor %}",
         "template_limit"),
        # taking too long
        ("{% for a in range(9) %}{% for b in range(9) %}{% for c in range(9) %}{% endfor %}{% endfor %}{% endfor %}",
         "template_refused"),
        ("{% macro m() %}{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}{% endmacro %}"
         "{% for c in range(1000) %}{{ m() }}{% endfor %}", "template_limit"),
        ("{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}", "template_error"),
        # filters outside the allowlist
        ("{{ 'x'|center(1000000000) }}", "template_error"),
        ("{{ 'x'|wordwrap(5) }}", "template_error"),
    ],
)  # fmt: skip
def test_escapes_and_bombs_are_refused_quickly(source, code):
    started = time.perf_counter()
    with pytest.raises(TemplateProblem) as raised:
        check(source)
        render(source, VARIABLES)
    assert raised.value.code == code, raised.value.message
    assert time.perf_counter() - started < 1.0


def test_an_undefined_variable_is_named():
    with pytest.raises(TemplateProblem) as raised:
        render("Hi {{ variables.nickname }}", VARIABLES)
    assert raised.value.code == "undefined_variable" and "nickname" in raised.value.message


def test_a_syntax_error_is_refused_when_saving_with_its_line():
    with pytest.raises(TemplateProblem) as raised:
        check("line one\n{% for x in session.tools %}")
    assert raised.value.code == "template_error" and raised.value.message.startswith("Line 2:")


def test_the_output_is_bounded():
    source = "{% for a in range(1000) %}{{ variables.block }}{% endfor %}"
    with pytest.raises(TemplateProblem) as raised:
        render(source, {**VARIABLES, "variables": {"block": "y" * 200}})
    assert raised.value.code == "template_limit" and str(MAX_OUTPUT) in raised.value.message


def test_a_long_render_is_stopped_at_its_deadline():
    source = "{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}{{ user.name }}"
    started = time.perf_counter()
    with pytest.raises(TemplateProblem) as raised:
        render(source, VARIABLES, timeout=0.001)
    assert raised.value.code == "template_limit" and time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "value",
    [{"a": float("nan")}, {"a": 10**20}, {"a": ["x"] * 1001}, {"a": "x" * (MAX_OUTPUT + 1)}, {"a": object()},
     {"a": [[[[[[[[[[1]]]]]]]]]]}],
)  # fmt: skip
def test_variables_outside_the_bounds_are_refused(value):
    with pytest.raises(TemplateProblem) as raised:
        plain(value)
    assert raised.value.code == "template_refused"


def test_variables_become_plain_immutable_values():
    assert plain({"tags": ["a", "b"], "n": 1, "ok": True, "none": None}) == {
        "tags": ("a", "b"), "n": 1, "ok": True, "none": None,
    }  # fmt: skip
