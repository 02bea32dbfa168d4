"""The widget in a real browser: Debian's Chromium, the real server on loopback, the loopback
LLM, and host pages on other origins that paste the snippet exactly as the API returns it."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import select, update

from app.models import ChatHistory, UsageToken
from tests import docgen
from tests.factories import create_chatbot, register, upload, wait_for_document
from tests.fake_llm import split_pieces

FACTS = (
    "Acme support is open Monday to Friday from 9:00 to 17:00 Central European Time.\n\n"
    "Returns are accepted within 30 days of delivery when the item is unused.\n\n"
    "The Acme Turbo blender has a 1200 watt motor and a two year warranty."
)
WELCOME = "Hello! Ask me about opening hours, returns or blenders."
REPLY = "Support is open **Monday to Friday** from nine to five, see the FAQ."

WIDGET = "chatbot-widget"
LAUNCHER = f"{WIDGET} .launcher"
PANEL = f"{WIDGET} .panel"
INPUT = f"{WIDGET} textarea"
ANSWERS = f"{WIDGET} .msg.bot:not(.welcome)"
QUESTIONS = f"{WIDGET} .msg.user"


@pytest.fixture
def make_bot(client, runtime, settings, live_url, tmp_path, monkeypatch, site):  # type: ignore[no-untyped-def]
    """A tenant with a chatbot that knows FACTS; returns (tenant, chatbot, snippet)."""
    # The snippet points at the server the browser reaches: the live one on loopback.
    monkeypatch.setattr(settings, "PUBLIC_BASE_URL", live_url)

    def make(
        text: str = FACTS, filename: str = "faq.txt", **fields: Any
    ) -> tuple[Any, dict[str, Any], str]:
        tenant = register(client)
        fields.setdefault("allowed_origins", [site.origin])
        fields.setdefault("welcome_message", WELCOME)
        chatbot = create_chatbot(client, tenant, **fields)
        doc = upload(
            client, tenant, chatbot["id"], docgen.make_txt(tmp_path / "doc.txt", text), filename
        )
        assert wait_for_document(client, tenant, chatbot["id"], doc["id"])["status"] == "ready"
        response = client.get(f"/api/chatbots/{chatbot['id']}/snippet", headers=tenant.headers)
        assert response.status_code == 200
        return tenant, chatbot, response.json()["snippet"]

    return make


def _history(db_session, chatbot_id: str) -> list[ChatHistory]:  # type: ignore[no-untyped-def]
    db_session.expire_all()
    rows = db_session.scalars(
        select(ChatHistory)
        .where(ChatHistory.chatbot_id == uuid.UUID(chatbot_id))
        .order_by(ChatHistory.timestamp)
    ).all()
    db_session.commit()
    return list(rows)


def _ask(page, question: str) -> Any:  # type: ignore[no-untyped-def]
    """Type a question, send it with Enter; returns the locator of its answer."""
    before = page.locator(ANSWERS).count()
    page.locator(INPUT).fill(question)
    page.locator(INPUT).press("Enter")
    expect(page.locator(ANSWERS)).to_have_count(before + 1)
    return page.locator(ANSWERS).nth(before)


def _focused(page) -> str:  # type: ignore[no-untyped-def]
    """What has the keyboard focus, inside the widget's shadow root too."""
    return str(
        page.evaluate(
            """() => {
                const el = document.activeElement;
                if (el && el.shadowRoot && el.shadowRoot.activeElement) {
                    const inner = el.shadowRoot.activeElement;
                    return 'widget:' + inner.tagName.toLowerCase() + '.' + inner.className;
                }
                return el ? el.tagName.toLowerCase() + '#' + el.id : '';
            }"""
        )
    )


def test_answer_streams_into_the_page_with_its_source(
    make_bot, fake_llm, context, site, db_session
):
    _, chatbot, snippet = make_bot(name="Acme support")
    fake_llm.set_reply(REPLY)
    pieces = split_pieces(REPLY)
    release = fake_llm.hold_stream_after(3)
    page = context.new_page()
    page.goto(site.page("/shop", snippet))

    expect(page.locator(LAUNCHER)).to_be_visible()
    expect(page.locator(PANEL)).to_be_hidden()
    page.locator(LAUNCHER).click()
    expect(page.locator(PANEL)).to_be_visible()
    expect(page.locator(f"{WIDGET} h2")).to_have_text(chatbot["name"])
    expect(page.locator(f"{WIDGET} .welcome")).to_contain_text(WELCOME)

    answer = _ask(page, "When is support open?")
    expect(page.locator(QUESTIONS).last).to_contain_text("When is support open?")
    # The first three tokens are on screen while the LLM still holds the rest: it streams.
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(answer.locator(".text")).to_have_text("".join(pieces[:3]))
    assert "nine to five" not in answer.inner_text()
    release.set()

    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".text")).to_have_text(
        "Support is open Monday to Friday from nine to five, see the FAQ."
    )
    expect(answer.locator(".text strong")).to_have_text("Monday to Friday")
    expect(answer.locator(".sources li")).to_have_text(["faq.txt"])
    if os.environ.get("WIDGET_SCREENSHOT"):
        page.set_viewport_size({"width": 900, "height": 720})
        page.screenshot(path=os.environ["WIDGET_SCREENSHOT"])

    rows = _history(db_session, chatbot["id"])
    assert [r.question for r in rows] == ["When is support open?"]
    assert rows[0].answer == REPLY and rows[0].mode == "llm"


def test_reload_keeps_the_conversation_and_follow_ups_share_the_session(
    make_bot, fake_llm, context, site, db_session
):
    _, chatbot, snippet = make_bot()
    page = context.new_page()
    page.goto(site.page("/shop", snippet))
    page.locator(LAUNCHER).click()
    first = _ask(page, "How long is the warranty?")
    expect(first).to_have_attribute("data-state", "done")
    first_answer = first.locator(".text").inner_text()

    page.reload()
    # The panel reopens where the visitor left it, with the conversation so far.
    expect(page.locator(PANEL)).to_be_visible()
    expect(page.locator(QUESTIONS)).to_have_text(["You: How long is the warranty?"])
    expect(page.locator(ANSWERS).locator(".text")).to_have_text([first_answer])
    expect(page.locator(ANSWERS).locator(".sources li")).to_have_text(["faq.txt"])

    follow_up = _ask(page, "And the motor power?")
    expect(follow_up).to_have_attribute("data-state", "done")
    rows = _history(db_session, chatbot["id"])
    assert [r.question for r in rows] == ["How long is the warranty?", "And the motor power?"]
    assert rows[0].session_id == rows[1].session_id
    # The server gave the LLM the earlier turn of that session.
    sent = fake_llm.requests[-1]["messages"]
    assert {"role": "user", "content": "How long is the warranty?"} in sent

    # "New conversation" clears the transcript and starts a new session.
    page.locator(f"{WIDGET} button.new").click()
    expect(page.locator(QUESTIONS)).to_have_count(0)
    expect(page.locator(f"{WIDGET} .welcome")).to_contain_text(WELCOME)
    fresh = _ask(page, "Can I return an item?")
    expect(fresh).to_have_attribute("data-state", "done")
    rows = _history(db_session, chatbot["id"])
    assert rows[2].session_id != rows[0].session_id
    page.reload()
    expect(page.locator(QUESTIONS)).to_have_text(["You: Can I return an item?"])


def test_a_question_asked_before_the_config_arrives_keeps_its_answer(
    make_bot, fake_llm, context, site
):
    # The widget draws a saved conversation at once and fetches its config meanwhile; a
    # visitor may ask before that config arrives. Its arrival must not redraw the log: the
    # answer being streamed is not saved yet and its bubble would vanish.
    _, chatbot, snippet = make_bot()
    held: dict[str, Any] = {}

    def hold(route: Any) -> None:
        if route.request.method == "GET" and "config" not in held:
            held["config"] = route
        elif route.request.method == "POST" and "answer" not in held:
            held["answer"] = route
        else:
            route.continue_()  # CORS preflights

    fake_llm.set_reply(REPLY)
    page = context.new_page()
    page.route(f"**/api/public/{chatbot['id']}", hold)
    page.route(f"**/api/public/{chatbot['id']}/query", hold)
    page.goto(site.page("/shop", snippet))
    page.locator(LAUNCHER).click()
    answer = _ask(page, "How long is the warranty?")
    # Route handlers run while Playwright is called: let it run until both requests are held.
    for _ in range(1000):
        if len(held) == 2:
            break
        page.wait_for_timeout(10)
    assert set(held) == {"config", "answer"}
    expect(page.locator(WIDGET)).not_to_have_attribute("data-state", "ready")
    expect(answer).to_have_attribute("data-state", "waiting")
    held["config"].continue_()
    expect(page.locator(WIDGET)).to_have_attribute("data-state", "ready")
    expect(page.locator(f"{WIDGET} .msg").first).to_contain_text(WELCOME)
    expect(page.locator(ANSWERS)).to_have_count(1)
    expect(answer).to_have_attribute("data-state", "waiting")
    held["answer"].continue_()
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".text")).to_have_text(REPLY.replace("**", ""))
    expect(page.locator(QUESTIONS)).to_have_text(["You: How long is the warranty?"])
    page.reload()  # and it was saved
    expect(page.locator(ANSWERS).locator(".text")).to_have_text([REPLY.replace("**", "")])


HOSTILE = (
    "<style>* { all: unset !important; } div { display: none !important; } "
    "html, body, * { font-size: 72px !important; line-height: 3 !important; } "
    "button, textarea, ol, li { width: 1px !important; height: 1px !important; }</style>"
)


def test_sources_name_the_section_of_a_structured_document(make_bot, fake_llm, context, site):
    _, _, snippet = make_bot("# Service\n\n## Opening hours\n\n" + FACTS, filename="faq.md")
    page = context.new_page()
    page.goto(site.page("/faq", snippet))
    page.locator(LAUNCHER).click()
    answer = _ask(page, "When is support open?")
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".sources li")).to_have_text(["faq.md \u203a Service > Opening hours"])
    page.reload()  # kept with the conversation
    page.locator(LAUNCHER).click()
    expect(page.locator(ANSWERS).locator(".sources li")).to_have_text(
        ["faq.md \u203a Service > Opening hours"]
    )


def test_hostile_page_styles_do_not_break_the_widget(make_bot, fake_llm, context, site):
    _, _, snippet = make_bot()
    page = context.new_page()
    page.goto(site.page("/hostile", snippet, head=HOSTILE))
    launcher = page.locator(LAUNCHER)
    expect(launcher).to_be_visible()
    box = launcher.bounding_box()
    assert box is not None and round(box["width"]) == 56 and round(box["height"]) == 56
    assert box["x"] + box["width"] == pytest.approx(1280 - 20, abs=1)
    assert box["y"] + box["height"] == pytest.approx(800 - 20, abs=1)

    launcher.click()
    panel = page.locator(PANEL)
    expect(panel).to_be_visible()
    panel_box = panel.bounding_box()
    assert panel_box is not None and round(panel_box["width"]) == 380
    welcome = page.locator(f"{WIDGET} .welcome")
    expect(welcome).to_be_visible()
    assert welcome.evaluate("el => getComputedStyle(el).fontSize") == "15px"
    answer = _ask(page, "When is support open?")
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".sources li")).to_have_text(["faq.txt"])
    text_box = page.locator(INPUT).bounding_box()
    assert text_box is not None and text_box["width"] > 200 and text_box["height"] >= 40


def test_widget_works_under_a_strict_content_security_policy(
    make_bot, fake_llm, context, site, live_url
):
    _, _, snippet = make_bot()
    csp = f"default-src 'none'; script-src {live_url}; connect-src {live_url}; style-src 'none'"
    page = context.new_page()
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text))
    page.goto(site.page("/csp", snippet, csp=csp))
    page.locator(LAUNCHER).click()
    panel = page.locator(PANEL)
    expect(panel).to_be_visible()
    box = panel.bounding_box()  # styled: no inline <style> was needed
    assert box is not None and round(box["width"]) == 380
    answer = _ask(page, "When is support open?")
    expect(answer).to_have_attribute("data-state", "done")
    assert not [v for v in violations if "Content Security Policy" in v], violations


STYLE_PROBE = """selector => Array.from(document.querySelectorAll(selector), el => {
    const s = getComputedStyle(el);
    return [s.display, s.position, s.width, s.height, s.backgroundColor, s.color, s.fontSize,
            s.fontFamily, s.borderRadius, s.padding, s.margin, s.boxShadow].join('|');
})"""
HOST_ELEMENTS = "main .panel, header, form.host-form, #host-button, p.intro, h1"


def test_widget_styles_do_not_leak_into_the_page(make_bot, context, site):
    _, _, snippet = make_bot()
    page = context.new_page()
    page.goto(site.page("/plain", ""))
    without = page.evaluate(STYLE_PROBE, HOST_ELEMENTS)
    page.goto(site.page("/with-widget", snippet))
    page.locator(LAUNCHER).click()
    expect(page.locator(PANEL)).to_be_visible()
    with_widget = page.evaluate(STYLE_PROBE, HOST_ELEMENTS)
    assert len(without) == 6 and with_widget == without


def test_small_screens_get_a_full_screen_panel(make_bot, browser, site):
    _, _, snippet = make_bot()
    context = browser.new_context(viewport={"width": 375, "height": 740})
    try:
        page = context.new_page()
        page.goto(site.page("/mobile", snippet))
        page.locator(LAUNCHER).click()
        box = page.locator(PANEL).bounding_box()
        assert box == {"x": 0, "y": 0, "width": 375, "height": 740}
        page.keyboard.press("Escape")
        expect(page.locator(LAUNCHER)).to_be_visible()
        expect(page.locator(PANEL)).to_be_hidden()
    finally:
        context.close()


def test_page_on_an_origin_not_allowed_shows_it_and_asks_nothing(
    make_bot, fake_llm, context, other_site, db_session
):
    _, chatbot, snippet = make_bot()  # allowed_origins: the other `site` only
    page = context.new_page()
    page.goto(other_site.page("/elsewhere", snippet))
    expect(page.locator(WIDGET)).to_have_attribute("data-state", "not-allowed")
    page.locator(LAUNCHER).click()
    expect(page.locator(f"{WIDGET} .state")).to_have_text(
        "This chat is not enabled on this website."
    )
    expect(page.locator(INPUT)).to_be_disabled()
    expect(page.locator(f"{WIDGET} .welcome")).to_have_count(0)
    page.locator(INPUT).evaluate("el => { el.disabled = false; el.value = 'Sneaky?'; }")
    page.locator(INPUT).press("Enter")
    expect(page.locator(QUESTIONS)).to_have_count(0)
    assert fake_llm.requests == []
    assert _history(db_session, chatbot["id"]) == []


PAYLOAD_DOC = (
    "Secret offers for members.\n\n"
    'Click <img src=x onerror="window.__pwned=1"> here and <script>window.__pwned=2</script> '
    "there for the member discount code."
)


def test_markup_from_documents_llm_and_settings_never_runs(make_bot, fake_llm, context, site):
    _, _, snippet = make_bot(
        text=PAYLOAD_DOC,
        filename="<img src=x onerror=window.__pwned=4>.txt",
        welcome_message=(
            '<img src=x onerror="window.__pwned=5">Welcome<script>window.__pwned=6</script>'
        ),
    )
    fake_llm.set_reply(
        PAYLOAD_DOC
        + "\n\n- [click me](javascript:window.__pwned=3)\n- [our docs](https://example.com/docs)"
    )
    page = context.new_page()
    page.goto(site.page("/xss", snippet))
    page.locator(LAUNCHER).click()
    expect(page.locator(f"{WIDGET} .welcome")).to_contain_text(
        '<img src=x onerror="window.__pwned=5">'
    )
    answer = _ask(page, "What is the member discount code?")
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".text")).to_contain_text('<img src=x onerror="window.__pwned=1">')
    expect(answer.locator(".text")).to_contain_text("<script>window.__pwned=2</script>")
    expect(answer.locator(".sources li")).to_have_text(["<img src=x onerror=window.__pwned=4>.txt"])
    assert page.locator(f"{WIDGET} img, {WIDGET} script").count() == 0
    links = answer.locator(".text a")
    expect(links).to_have_count(1)
    expect(links).to_have_attribute("href", "https://example.com/docs")
    expect(links).to_have_attribute("rel", "noopener noreferrer")
    expect(links).to_have_attribute("target", "_blank")
    expect(answer.locator(".text li").first).to_have_text("[click me](javascript:window.__pwned=3)")
    page.reload()  # the conversation restored from storage is text too
    expect(page.locator(ANSWERS).first).to_contain_text("window.__pwned=2")
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_keyboard_alone_opens_asks_and_closes(make_bot, fake_llm, context, site):
    _, _, snippet = make_bot()
    release = fake_llm.hold_stream_after(0)
    page = context.new_page()
    page.goto(site.page("/keyboard", snippet))
    expect(page.locator(LAUNCHER)).to_be_visible()
    for _ in range(6):
        page.keyboard.press("Tab")
        if _focused(page).startswith("widget:button.launcher"):
            break
    assert _focused(page) == "widget:button.launcher"
    page.keyboard.press("Enter")
    expect(page.locator(PANEL)).to_be_visible()
    assert _focused(page) == "widget:textarea."
    page.keyboard.type("When is support open?")
    page.keyboard.press("Enter")
    answer = page.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "waiting")
    expect(answer.locator(".typing")).to_be_visible()
    expect(answer.locator(".typing")).to_contain_text("The assistant is typing")
    release.set()
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".typing")).to_have_count(0)
    # Every control is reachable: Shift+Tab walks back to the header's buttons.
    header_buttons = {"widget:button.close", "widget:button.new"}
    seen = set()
    for _ in range(5):
        page.keyboard.press("Shift+Tab")
        seen.add(_focused(page))
        if header_buttons <= seen:
            break
    assert header_buttons <= seen
    page.keyboard.press("Escape")
    expect(page.locator(PANEL)).to_be_hidden()
    assert _focused(page) == "widget:button.launcher"
    expect(page.locator(LAUNCHER)).to_have_attribute("aria-expanded", "false")


def _serious_violations(page, axe_source: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    page.add_script_tag(content=axe_source)
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def test_open_widget_has_no_serious_accessibility_violations(
    make_bot, fake_llm, context, site, axe_source
):
    _, _, snippet = make_bot()
    page = context.new_page()
    page.goto(site.page("/a11y", snippet))
    assert _serious_violations(page, axe_source) == []  # closed: the launcher alone
    page.locator(LAUNCHER).click()
    answer = _ask(page, "When is support open?")
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".sources li")).to_have_count(1)
    panel = page.locator(PANEL)
    expect(panel).to_have_attribute("role", "dialog")
    assert panel.get_attribute("aria-labelledby") == "title"
    log = page.locator(f"{WIDGET} .log")
    expect(log).to_have_attribute("aria-live", "polite")
    assert _serious_violations(page, axe_source) == []


def test_snippet_options_position_colour_title_open_and_language(
    make_bot, context, site, axe_source
):
    _, _, snippet = make_bot()
    options = (
        'data-position="left" data-accent="#ffd400" data-title="Acme Hilfe" '
        'data-open="true" data-lang="de" '
    )
    page = context.new_page()
    page.goto(
        site.page("/options", snippet.replace("<script ", "<script " + options, 1), lang="de")
    )
    panel = page.locator(PANEL)
    expect(panel).to_be_visible()  # open on load
    expect(page.locator(f"{WIDGET} h2")).to_have_text("Acme Hilfe")
    expect(page.locator(INPUT)).to_have_attribute("placeholder", "Stellen Sie eine Frage…")
    expect(page.locator(f"{WIDGET} button.send")).to_have_text("Senden")
    expect(page.locator(LAUNCHER)).to_have_attribute("aria-label", "Chat schließen")
    launcher = page.locator(LAUNCHER)
    box = launcher.bounding_box()
    assert box is not None and box["x"] == pytest.approx(20, abs=1)
    colours = launcher.evaluate(
        "el => [getComputedStyle(el).backgroundColor, getComputedStyle(el).color]"
    )
    # A light accent gets dark text, so the contrast holds.
    assert colours == ["rgb(255, 212, 0)", "rgb(17, 17, 17)"]
    assert _serious_violations(page, axe_source) == []


def test_visitor_errors_are_explained_and_nothing_is_lost(
    make_bot, fake_llm, context, site, settings, monkeypatch, db_session, app
):
    tenant, chatbot, snippet = make_bot()
    monkeypatch.setattr(settings, "RATE_LIMIT_PUBLIC_PER_CLIENT", "1/minute")
    page = context.new_page()
    page.goto(site.page("/errors", snippet))
    page.locator(LAUNCHER).click()
    expect(_ask(page, "When is support open?")).to_have_attribute("data-state", "done")

    # 429: the message uses Retry-After; the input stays usable.
    limited = _ask(page, "And on Sundays?")
    expect(limited).to_have_attribute("data-state", "error")
    expect(limited.locator(".note")).to_contain_text("too quickly")
    assert any(ch.isdigit() for ch in limited.locator(".note").inner_text())
    expect(page.locator(INPUT)).to_be_enabled()
    monkeypatch.setattr(settings, "RATE_LIMIT_PUBLIC_PER_CLIENT", "60/minute")
    app.state.runtime.limiter.reset()

    # 402 (the tenant's balance is gone): a visitor-safe "unavailable", no balance shown.
    customer_id = uuid.UUID(tenant.customer_id)
    db_session.execute(
        update(UsageToken).where(UsageToken.customer_id == customer_id).values(tokens_remaining=0)
    )
    db_session.commit()
    broke = _ask(page, "Can I return an item?")
    expect(broke).to_have_attribute("data-state", "error")
    expect(broke.locator(".note")).to_contain_text("unavailable right now")
    assert "token" not in broke.inner_text().lower()
    db_session.execute(
        update(UsageToken)
        .where(UsageToken.customer_id == customer_id)
        .values(tokens_remaining=50_000)
    )
    db_session.commit()

    # 503 from the LLM (an `error` event mid-stream), then Retry answers.
    fake_llm.fail_next(10, status=500)
    failed = _ask(page, "How strong is the blender?")
    expect(failed).to_have_attribute("data-state", "error")
    expect(failed.locator(".note")).to_contain_text("unavailable right now")
    fake_llm.fail_next(0)
    failed.locator(".note button").click()
    retried = page.locator(ANSWERS).last
    expect(retried).to_have_attribute("data-state", "done")

    # The network goes away: said so; back online, Retry works.
    context.set_offline(True)
    offline = _ask(page, "Is there a warranty?")
    expect(offline).to_have_attribute("data-state", "error")
    expect(offline.locator(".note")).to_contain_text("cannot be reached")
    expect(page.locator(INPUT)).to_be_enabled()
    context.set_offline(False)
    offline.locator(".note button").click()
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "done")

    questions = [
        "When is support open?",
        "And on Sundays?",
        "Can I return an item?",
        "How strong is the blender?",
        "Is there a warranty?",
    ]
    expect(page.locator(QUESTIONS)).to_have_text([f"You: {q}" for q in questions])
    page.reload()  # every question the visitor typed is still there
    expect(page.locator(QUESTIONS)).to_have_text([f"You: {q}" for q in questions])
    answered = [r.question for r in _history(db_session, chatbot["id"])]
    assert answered == [
        "When is support open?",
        "How strong is the blender?",
        "Is there a warranty?",
    ]
