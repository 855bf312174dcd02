"""The scoreboard page in a real browser: Debian's chromium driven by
Playwright for Python (never ``playwright install``), over a real broker,
worker and gateway, with the shipped Beijing final A replayed live. The
assertions read the page's visible text, as a person would.

``LAPSTREAM_SCREENSHOT_DIR=docs`` also writes the screenshots there (the
README's picture comes from this test).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from streams import beijing
from tests import gatewaykit as G
from tests import msgs as M

pytestmark = [pytest.mark.live, pytest.mark.timeout(600)]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def stack():
    s = G.Stack()
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser(stack):   # after the stack: Playwright's sync API holds this thread's event loop
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "chromium is missing: make deps installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_text(page, selector: str, needle: str, timeout_ms: int = WAIT_MS) -> None:
    """Wait until the element's visible text (innerText) contains ``needle``."""
    page.wait_for_function(
        "([sel, needle]) => { const n = document.querySelector(sel);"
        " return !!n && n.innerText.toLowerCase().includes(needle.toLowerCase()); }",
        arg=[selector, needle], timeout=timeout_ms, polling=50)


def save(page, tmp: Path, name: str, full_page: bool = False) -> Path:
    out = tmp / name
    page.screenshot(path=str(out), full_page=full_page)
    target = os.environ.get("LAPSTREAM_SCREENSHOT_DIR")
    if target:
        shutil.copy(out, Path(target) / name)
    return out


def test_the_final_a_live_as_a_person_sees_it(stack, browser):
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    page.goto(stack.gateway.url("/"))
    wait_text(page, "#conn", "live")
    replay = G.replay_in_thread(stack.broker.bootstrap, G.feed_lines(beijing.FINAL_A_FILE), speed=8)
    # the race starts: rows with distances, the status says live
    wait_text(page, "#race-title", "OWG2022-TPW-FA")
    wait_text(page, "#board-body", " m")
    assert text(page, "#race-status").lower() == "live"
    assert "team pursuit" in text(page, "#race-meta")
    assert "third:" in text(page, "tr[data-competitor='JPN']")
    # Canada finishes in an Olympic record: the flag is on Canada's row
    wait_text(page, "tr[data-competitor='CAN']", "2:53.44")
    can = page.locator("tr[data-competitor='CAN']")
    assert can.locator(".flag").inner_text() == "OR" and can.locator(".flag").is_visible()
    wait_text(page, "#records", "2:53.44")
    assert "Canada" in text(page, "#records") and "was 2:53.61" in text(page, "#records")
    # Takagi's fall: suspected first, seen on Japan's row, then confirmed
    wait_text(page, "tr[data-competitor='JPN'] td.notes", "fall suspected")
    assert "Nana Takagi" in text(page, "tr[data-competitor='JPN'] td.notes")
    wait_text(page, "tr[data-competitor='JPN'] td.notes", "fall confirmed")
    incidents = text(page, "#incidents").splitlines()
    assert [ln for ln in incidents if "suspected" in ln][0] == incidents[0]
    assert "confirmed" in incidents[1] and "Nana Takagi" in incidents[1]
    # the referee: official
    wait_text(page, "#race-status", "official")
    replay.join(60)
    assert not isinstance(replay.result, BaseException), replay.result
    rows = page.locator("#board-body tr").all_inner_texts()
    assert rows[0].split()[0] == "1" and "Canada" in rows[0] and "2:53.44" in rows[0]
    assert rows[1].split()[0] == "2" and "Japan" in rows[1] and "3:04.47" in rows[1] and "+11.02" in rows[1]
    standings = page.locator("#standings-body tr").all_inner_texts()
    assert "Canada" in standings[0] and "Japan" in standings[1]
    assert "complete" in text(page, "#standings-title").lower()
    assert "unofficial" in text(page, "#revisions") and "official" in text(page, "#revisions")
    save(page, stack.tmp, "scoreboard.png")
    # a phone: the same facts, no sideways scrolling
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    phone.goto(stack.gateway.url("/"))
    wait_text(phone, "#race-status", "official")
    assert "2:53.44" in text(phone, "tr[data-competitor='CAN']")
    assert "fall confirmed" in text(phone, "tr[data-competitor='JPN']")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    save(phone, stack.tmp, "scoreboard-phone.png", full_page=True)
    phone.close()
    page.close()


def test_a_photo_finish_changes_the_row_and_the_sprint_points(stack, browser):
    """A mass start with a blanket finish: A wins on the transponders; then the
    camera's times arrive and B's row moves to first with the points of the
    win, marked as a photo revision."""
    gun = M.T0 + 60 * M.S
    race = M.race("MS-TEST", [M.comp(n, 0) for n in ("A", "B", "C")], fmt="mass_start", distance=6400,
                  laps=16, level="WC")
    # every loop of every lap, 30 s a lap, the three a few milliseconds apart: a blanket finish
    reads = [M.read(f"{n}-T1", at, gun + (lap - 1) * 30 * M.S + (at or 400) * 75_000 + i * 5_000)
             for lap in range(1, 17) for at in (100, 200, 300, 0) for i, n in enumerate(("A", "B", "C"))]
    feed = [M.venue(), race, M.start("MS-TEST", gun)] + M.by_time(reads + M.heartbeats(gun, gun + 500 * M.S))
    t_fin = gun + 16 * 30 * M.S
    photos = [M.hb(gun + 500 * M.S + 500_000),
              M.photo("MS-TEST", "B", t_fin - 1_000, gun + 501 * M.S),
              M.photo("MS-TEST", "A", t_fin + 2_000, gun + 502 * M.S)]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(stack.gateway.url("/"))
    wait_text(page, "#conn", "live")
    # up to lap 8's sprint: the intermediate sprint points so far (5 + 5, 3 + 3, 1 + 1)
    cut = gun + 8 * 30 * M.S + 10 * M.S
    first = [m for m in feed if m["t_us"] <= cut]
    G.replay_in_thread(stack.broker.bootstrap, M.lines(first), speed=None).join(120)
    wait_text(page, "#race-select", "MS-TEST")
    page.select_option("#race-select", "MS-TEST")   # as a person picks the race
    wait_text(page, "#board-body", "00 m")   # a split shown (the last may already be past the lap-8 sprint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pts = {c: page.locator(f"tr[data-competitor='{c}'] td.pts").inner_text() for c in "ABC"}
        if pts == {"A": "10", "B": "6", "C": "2"}:
            break
        time.sleep(0.1)
    assert pts == {"A": "10", "B": "6", "C": "2"}
    assert text(page, "#race-status").lower() == "live"
    G.replay_in_thread(stack.broker.bootstrap, M.lines(feed[len(first):]), speed=None).join(120)
    wait_text(page, "#race-status", "unofficial")
    wait_text(page, "#board-body", "75")
    before = page.locator("#board-body tr").all_inner_texts()
    assert before[0].split()[:2] == ["1", "A"] and "75" in before[0].split()
    assert "fall" not in text(page, "#board-body")
    assert page.locator("th.pts").is_visible()
    G.replay_in_thread(stack.broker.bootstrap, M.lines(photos), speed=None).join(120)
    wait_text(page, "tr[data-competitor='B']", "photo")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = page.locator("#board-body tr").all_inner_texts()
        if after[0].split()[:2] == ["1", "B"] and "69" in after[0].split():
            break
        time.sleep(0.1)
    assert after[0].split()[:2] == ["1", "B"] and "69" in after[0].split(), after
    assert "photo rev" in after[0]   # (the revision counts the provisional finishes too)
    assert "55" in after[1].split() and after[1].split()[:2] == ["2", "A"]
    assert "B: finish revised" in text(page, "#revisions")
    page.close()


def test_provisional_splits_and_their_final_revision(stack, browser):
    """Splits published with "final": false show as provisional; the final
    revision (a higher revision, another time) replaces the row's time; an
    older revision arriving late changes nothing."""
    from streams import topics as T

    def split(rev, final, time_ms, shown, who="NED-X"):
        return {"kind": "split", "v": 1, "event_id": f"prov-{who}-{rev}-{time_ms}", "race_id": "PROV-1",
                "t_us": M.T0 + rev, "attempt": 1, "competitor_id": who, "skater_id": who, "distance_m": 500,
                "time_ms": time_ms, "time": shown, "lap_ms": None, "rank": 1, "behind_ms": 0,
                "revision": rev, "final": final}

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(stack.gateway.url("/"))
    wait_text(page, "#conn", "live")
    G.produce_in_thread(stack.broker.bootstrap, T.SPLITS.name, [split(0, False, 34_560, "34.56")], b"PROV-1")
    wait_text(page, "#race-select", "PROV-1")
    page.select_option("#race-select", "PROV-1")
    wait_text(page, "tr[data-competitor='NED-X']", "provisional")
    assert "34.56" in text(page, "tr[data-competitor='NED-X']")
    # the final revision, then a provisional one (another event, a lower revision) arriving late,
    # then another skater's split: same key, same partition, so it comes after the late one
    G.produce_in_thread(stack.broker.bootstrap, T.SPLITS.name,
                        [split(1, True, 34_510, "34.51"), split(0, False, 34_600, "34.60"),
                         split(0, True, 35_000, "35.00", who="NED-Y")], b"PROV-1")
    wait_text(page, "#board-body", "35.00")
    row = text(page, "tr[data-competitor='NED-X']")
    assert "34.51" in row
    assert "provisional" not in row and "34.56" not in row and "34.60" not in row
    assert "split 500 m revised to 34.51" in text(page, "#revisions")
    page.close()
