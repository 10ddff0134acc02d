"""The Dagster UI in a real browser: the asset graph and the report asset's page.

Slow (run with `make test-slow` or `pytest -m slow tests/test_ui_browser.py -s`). The test
materializes the graph for the `synthetic` dataset into a persistent instance under a temporary
LETTINGO_HOME (the way `lettingo run` does), starts `dagster-webserver` on loopback against it,
and drives headless Chromium with Playwright:

- the global asset graph (`/asset-groups`, every group expanded) shows every asset;
- the `evaluation_report` page (`/assets/evaluation_report`) shows the report's table, the
  Markdown table of its latest materialization's metadata rendered as an HTML table (inline, or
  in the "[Show Markdown]" dialog that the UI uses for long Markdown values);
- the `preference_pairs` page shows its code version (derived from its logic and settings) and
  its latest materialization's data version (the hash of its rows), as the instance has them.

It uses the system's Chromium (`chromium` on PATH, or LETTINGO_CHROMIUM=/path/to/chromium),
never a browser that Playwright downloads, and is skipped when none is found. Screenshots go to
the test's tmp folder, and also to LETTINGO_SCREENSHOT_DIR when that is set; their paths are
printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from synthetic import write_movielens_atomic

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATASET = "synthetic"
PRESET = "ci"
REQUIRED_ASSETS = (
    "interactions",
    "items",
    "task_samples",
    "sampled_profiles",
    "reward_scores",
    "preference_pairs",
    "dpo_checkpoint",
    "evaluation_report",
)
REPORT_ASSET = "evaluation_report"
# An asset whose page must show its data version and code version (the audit trail).
VERSIONED_ASSET = "preference_pairs"
SERVER_START_TIMEOUT_S = 180
UI_LOAD_TIMEOUT_MS = 90_000  # the first page waits for the code location to load


def find_chromium() -> str | None:
    """The system's Chromium: LETTINGO_CHROMIUM, else a Chromium or Chrome on PATH."""
    override = os.environ.get("LETTINGO_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def ui_environment(home: Path, data: Path) -> dict[str, str]:
    """The environment of every process of this test: its own home, data cache and instance."""
    env = dict(os.environ)
    env.update(
        LETTINGO_HOME=str(home),
        LETTINGO_DATA=str(data),
        LETTINGO_PRESET=PRESET,
        DAGSTER_HOME=str(home / "dagster"),
        GX_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MLFLOW_ENABLE_TELEMETRY="false",
        PYTHONUNBUFFERED="1",
    )
    # LETTINGO_DATASETS stays the test registry of conftest.py, which has `synthetic`.
    return env


def materialize_for_ui(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Give the UI runs and materializations to show.

    Writes the synthetic dataset into the data cache and materializes the whole graph for its
    partition in the persistent instance under LETTINGO_HOME with `lettingo run`, as a user does.
    Adjust here if the graph grows assets that should (not) be materialized for the UI test.
    """
    write_movielens_atomic(
        Path(env["LETTINGO_DATA"]) / DATASET,
        users=80, items=150, min_ratings=20, max_ratings=70, seed=3,
    )  # fmt: skip
    command = [
        sys.executable, "-m", "lettingo_dagster.cli", "run",
        "--preset", PRESET, "--dataset", DATASET, "--log-level", "WARNING",
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1200
    )


def _markdown_table_header(markdown: str) -> list[str] | None:
    """Header cells of the first Markdown table in `markdown` (a header row, then `|---|`)."""
    lines = [line.strip() for line in markdown.splitlines()]
    for header, separator in zip(lines, lines[1:], strict=False):
        if header.startswith("|") and re.fullmatch(
            r"\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?", separator
        ):
            return [cell.strip() for cell in header.strip("|").split("|")]
    return None


def _normalize(cell: str) -> str:
    """Cell text as compared between Markdown source and rendered HTML."""
    return re.sub(r"[\s`*_]", "", cell).lower()


def report_table_headers(dagster_home: Path, asset: str = REPORT_ASSET) -> list[list[str]]:
    """Header cells of every Markdown table in the asset's latest materialization's metadata."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return []
    headers = []
    for value in event.asset_materialization.metadata.values():
        if isinstance(value, dg.MarkdownMetadataValue):
            header = _markdown_table_header(value.value or "")
            if header:
                headers.append(header)
    return headers


def asset_versions(dagster_home: Path, asset: str) -> tuple[str | None, str | None]:
    """The data version and code version of the asset's latest materialization."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None, None
    tags = event.asset_materialization.tags or {}
    return tags.get("dagster/data_version"), tags.get("dagster/code_version")


def _show_versions(page, url: str, data_version: str, code_version: str, shots: Path) -> list[str]:
    """An asset's overview shows its code version ("Compute details") and its latest data
    version (metadata); the event's own tags ("Show tags" in Events) hold both too. Returns what
    was not shown, and saves a screenshot of each page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def shown(text: str) -> bool:
        try:
            page.get_by_text(text).first.wait_for(state="visible", timeout=20_000)
        except PlaywrightTimeout:
            return False
        return True

    missing = []
    page.goto(url)
    page.get_by_text("Definition", exact=True).first.wait_for(timeout=60_000)
    page.get_by_text("Compute details", exact=True).first.click()
    if not shown(code_version):
        missing.append(f"code version {code_version} (overview)")
    if not shown(data_version):
        missing.append(f"data version {data_version} (overview)")
    page.screenshot(path=shots / "asset_versions.png", full_page=True)
    page.goto(url + "?view=events")
    page.get_by_text(re.compile(r"^Show tags \(\d+\)$")).first.click()
    for name, value in (("data_version", data_version), ("code_version", code_version)):
        row = page.locator("tr", has=page.get_by_text(name, exact=True)).filter(has_text=value)
        try:
            row.first.wait_for(state="visible", timeout=20_000)
        except PlaywrightTimeout:
            missing.append(f"{name} {value} (the event's tags)")
    page.screenshot(path=shots / "asset_event_versions.png", full_page=True)
    return missing


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Webserver:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]


def start_webserver(env: dict[str, str], log_path: Path) -> Webserver:
    """`dagster-webserver` on 127.0.0.1 in a session of its own, ready when /server_info answers.

    The webserver alone serves the UI (no daemon is needed to browse). Its own session makes it
    a process group that `stop_webserver` can signal as a whole (the code server is its child).
    """
    port = _free_port()
    command = [
        sys.executable, "-m", "dagster_webserver",
        "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    server = Webserver(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(
                f"dagster-webserver exited with {process.returncode} before serving; "
                f"its log:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(server.url + "/server_info", timeout=5) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            stop_webserver(server)
            pytest.fail(
                f"dagster-webserver did not answer on {server.url}/server_info within "
                f"{SERVER_START_TIMEOUT_S} s; its log:\n{server.log_tail()}"
            )
        time.sleep(0.5)


def stop_webserver(server: Webserver) -> None:
    """SIGINT to the server's process group (a clean shutdown), then SIGKILL what is left."""
    pgid = server.process.pid  # start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(pgid, signal.SIGINT)
        server.process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):  # the code server, if it outlived the leader
        os.killpg(pgid, signal.SIGKILL)
    server.process.wait(timeout=10)


@pytest.fixture
def ui_home(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    home = tmp_path / "home"
    env = ui_environment(home, tmp_path / "data")
    yield env, home


def _dismiss_community_modal(page, wait_ms: int) -> None:
    """Close the "Join the Dagster community" dialog that the UI shows on a first visit."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    skip = page.get_by_role("button", name="Skip", exact=True)
    try:
        skip.wait_for(state="visible", timeout=wait_ms)
    except PlaywrightTimeout:
        return
    skip.click()
    skip.wait_for(state="hidden", timeout=10_000)


def _find_report_table(page, expected_headers: list[list[str]]) -> tuple[bool, str]:
    """Whether the page shows a rendered Markdown table whose header holds one of the expected
    headers (any rendered Markdown table when none is expected); and a note of what was seen."""
    wanted = [[_normalize(cell) for cell in header] for header in expected_headers]

    def matches(tables) -> bool:
        for i in range(tables.count()):
            cells = tables.nth(i).locator("tr").first.locator("th, td").all_inner_texts()
            seen = {_normalize(cell) for cell in cells}
            if not wanted and seen:
                return True
            if any(set(header) <= seen for header in wanted):
                return True
        return False

    inline = page.locator(".dagster-markdown table")
    if matches(inline):
        return True, "inline in the metadata"
    # Long Markdown values sit behind "[Show Markdown]" buttons that open a dialog.
    buttons = page.get_by_text("[Show Markdown]", exact=True)
    for i in range(buttons.count()):
        buttons.nth(i).click()
        dialog = page.get_by_role("dialog").last
        dialog.locator(".dagster-markdown").first.wait_for(state="visible", timeout=10_000)
        if matches(dialog.locator(".dagster-markdown table")):
            return True, f"in the [Show Markdown] dialog #{i + 1}"
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden", timeout=10_000)
    return (
        False,
        f"{inline.count()} inline Markdown table(s), {buttons.count()} [Show Markdown] button(s)",
    )


def _find_rendered_plot(page, screenshot: Path) -> bool:
    """Whether one of the page's Markdown values shows a decoded PNG (inline or behind
    "[Show Markdown]"); screenshots the first one found."""

    def decoded(images) -> bool:
        for i in range(images.count()):
            image = images.nth(i)
            if image.evaluate("img => img.complete && img.naturalWidth > 0"):
                image.screenshot(path=screenshot)
                return True
        return False

    selector = ".dagster-markdown img[src^='data:image/png']"
    if decoded(page.locator(selector)):
        return True
    buttons = page.get_by_text("[Show Markdown]", exact=True)
    for i in range(buttons.count()):
        buttons.nth(i).click()
        dialog = page.get_by_role("dialog").last
        dialog.locator(".dagster-markdown").first.wait_for(state="visible", timeout=10_000)
        if decoded(dialog.locator(selector)):
            page.keyboard.press("Escape")
            return True
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden", timeout=10_000)
    return False


def test_ui_shows_asset_graph_and_report(
    ui_home: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    chromium = find_chromium()
    if chromium is None:
        override = os.environ.get("LETTINGO_CHROMIUM")
        pytest.skip(
            f"LETTINGO_CHROMIUM={override} is not a file"
            if override
            else "no Chromium found (install Debian's `chromium` or set LETTINGO_CHROMIUM)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the `playwright` package is absent"
    )

    env, home = ui_home
    started = time.perf_counter()
    run = materialize_for_ui(env)
    print(
        f"\nlettingo run --preset {PRESET} --dataset {DATASET}: exit {run.returncode} in "
        f"{time.perf_counter() - started:.0f} s\n{run.stdout[-4000:]}"
    )
    problems: list[str] = []
    if run.returncode != 0:
        problems.append(f"`lettingo run` exited {run.returncode}: {run.stderr[-3000:]}")
    expected_headers = report_table_headers(home / "dagster")
    if not expected_headers:
        problems.append(
            f"{REPORT_ASSET} has no materialization with a Markdown table in its metadata"
        )

    shots = tmp_path / "screenshots"
    shots.mkdir()
    saved: list[Path] = []
    server = start_webserver(env, tmp_path / "webserver.log")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(30_000)

                # The global asset graph, every group expanded (the graph's Alt+E shortcut).
                page.goto(server.url + "/asset-groups")
                _dismiss_community_modal(page, wait_ms=15_000)
                page.get_by_text("Global asset lineage").first.wait_for(timeout=UI_LOAD_TIMEOUT_MS)
                graph = page.locator("svg foreignObject")
                graph.first.wait_for(state="visible", timeout=UI_LOAD_TIMEOUT_MS)
                page.keyboard.press("Alt+e")
                page.wait_for_url(re.compile(r"[?&]expanded="), timeout=15_000)
                for key in REQUIRED_ASSETS:
                    node = graph.get_by_text(key, exact=True).first
                    try:
                        node.wait_for(state="visible", timeout=10_000)
                    except sync_api.TimeoutError:
                        problems.append(f"asset {key!r} is not in the UI's asset graph")
                page.wait_for_timeout(1000)  # let the layout settle for the screenshot
                saved.append(shots / "asset_graph.png")
                page.screenshot(path=saved[-1])

                # The report asset's page: its latest materialization's metadata.
                page.goto(f"{server.url}/assets/{REPORT_ASSET}")
                _dismiss_community_modal(page, wait_ms=2_000)
                try:
                    # The overview's "Definition" section: the asset exists and its page loaded.
                    page.get_by_text("Definition", exact=True).first.wait_for(timeout=60_000)
                    page.get_by_text("Latest materialization").first.wait_for(timeout=30_000)
                    page.locator("table").first.wait_for(state="visible", timeout=30_000)
                except sync_api.TimeoutError:
                    problems.append(
                        f"the page /assets/{REPORT_ASSET} shows no asset definition or no "
                        "materialization metadata"
                    )
                else:
                    found, note = _find_report_table(page, expected_headers)
                    print(f"report table on /assets/{REPORT_ASSET}: {found} ({note})")
                    if not found:
                        problems.append(
                            f"no report table on /assets/{REPORT_ASSET} ({note}); expected a "
                            f"header like {expected_headers[:1]}"
                        )
                saved.append(shots / f"{REPORT_ASSET}.png")
                page.screenshot(path=saved[-1], full_page=True)

                # The report's plots render as images (PNG data in the Markdown metadata).
                if not _find_rendered_plot(page, shots / "report_plot.png"):
                    problems.append(f"no rendered plot image on /assets/{REPORT_ASSET}")
                else:
                    saved.append(shots / "report_plot.png")
                # An asset's page shows its code version and its data version.
                data_version, code_version = asset_versions(home / "dagster", VERSIONED_ASSET)
                if not data_version or not code_version:
                    problems.append(f"{VERSIONED_ASSET} has no data or code version")
                else:
                    url = f"{server.url}/assets/{VERSIONED_ASSET}"
                    missing = _show_versions(page, url, data_version, code_version, shots)
                    print(f"/assets/{VERSIONED_ASSET}: data version {data_version}, code "
                          f"version {code_version}, not shown: {missing or 'none'}")  # fmt: skip
                    problems.extend(f"/assets/{VERSIONED_ASSET} shows no {m}" for m in missing)
                    saved.extend([shots / "asset_versions.png", shots / "asset_event_versions.png"])
            finally:
                browser.close()
    finally:
        stop_webserver(server)

    copy_to = os.environ.get("LETTINGO_SCREENSHOT_DIR")
    for shot in saved:
        print(f"screenshot: {shot}")
        if copy_to:
            Path(copy_to).mkdir(parents=True, exist_ok=True)
            print(f"screenshot: {shutil.copy2(shot, Path(copy_to) / shot.name)}")
    if problems:
        print(f"webserver log tail:\n{server.log_tail(3000)}")
    assert not problems, "\n".join(problems)
