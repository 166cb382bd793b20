"""A planner at work in a real browser: Debian's chromium, headless, driven by selenium
through Debian's chromedriver, against each NocoDB version's stack (tests/nocodb/stack.py).

NocoDB's grid draws its cells on a canvas, so the test works it the way a person with a
keyboard does: one click into the grid's first row (the canvas' own top edge plus NocoDB's
header and row height), then arrow keys to the column, whose position comes from the view's
column order (facusync.nocodb_workspace.COLUMN_ORDER, checked by test_nocodb.py), Enter to
edit, type, Enter to save. Everything else is found through NocoDB's data-testid attributes.
What the grid shows after a reload is read from the rows NocoDB's page loaded (its own
requests, recorded in the page), and every edit is checked in PostgreSQL. On failure a
screenshot is saved in $FACUSYNC_NOCODB_SCREENSHOTS (default $TMPDIR/facusync-nocodb-screenshots;
its path is printed with the failure).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from facusync.nocodb_workspace import COLUMN_ORDER, VIEW_TITLES
from tests.nocodb.conftest import MEASUREMENTS
from tests.nocodb.stack import NOCODB_ROLE_PASSWORD, Stack, run_setup, tracking_row, wait_for

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402

pytestmark = pytest.mark.timeout(300)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000")
PLANNER_EMAIL = "planificadora@facusync.test"
PLANNER_PASSWORD = "Planifica-" + "Pw-2026-x"
# NocoDB's grid: header row and data row height (its default "short" rows), CSS pixels.
GRID_HEADER, GRID_ROW = 32, 32
GRID_COLUMNS = ("conduce", *COLUMN_ORDER)
# Records the bodies of the page's own requests (NocoDB loads rows with XHR or fetch).
RECORD_RESPONSES = """
window.__responses = [];
const open = XMLHttpRequest.prototype.open;
XMLHttpRequest.prototype.open = function (method, url) {
  this.__url = String(url);
  return open.apply(this, arguments);
};
const send = XMLHttpRequest.prototype.send;
XMLHttpRequest.prototype.send = function () {
  this.addEventListener('load', () => {
    if (this.responseType === '' || this.responseType === 'text') {
      window.__responses.push([this.__url, this.responseText]);
    }
  });
  return send.apply(this, arguments);
};
const fetchOriginal = window.fetch;
window.fetch = async function (input) {
  const response = await fetchOriginal.apply(this, arguments);
  const url = typeof input === 'string' ? input : input.url;
  response.clone().text().then((text) => window.__responses.push([url, text]), () => {});
  return response;
};
"""


@pytest.fixture(scope="module")
def planner(stack: Stack) -> tuple[str, str]:
    """A planner invited by `nocodb-setup --invite`, signed up through the invitation link."""
    result = run_setup(stack.nocodb, stack.pg, "--json", "--invite", PLANNER_EMAIL,
                       NOCODB_EMAIL=stack.nocodb.admin_email,
                       NOCODB_PASSWORD=stack.nocodb.admin_password,
                       PG_NOCODB_ROLE_PASSWORD=NOCODB_ROLE_PASSWORD)
    assert result.returncode == 0, result.stderr + result.stdout
    outcome = json.loads(result.stdout)["invites"][PLANNER_EMAIL]
    assert outcome.startswith("invited as editor; sign-up link "), outcome
    token = outcome.rsplit("/", 1)[-1]
    stack.nocodb.call("POST", "/api/v1/auth/user/signup",
                      {"email": PLANNER_EMAIL, "password": PLANNER_PASSWORD, "token": token},
                      anonymous=True)
    return PLANNER_EMAIL, PLANNER_PASSWORD


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    for program in (CHROMIUM, CHROMEDRIVER):
        if not Path(program).exists():
            pytest.fail(f"{program} is missing: `make deps` installs chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_RESPONSES})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Planner:
    """What a planner does in NocoDB's page, in NocoDB's own terms."""

    def __init__(self, driver: WebDriver, stack: Stack) -> None:
        self.driver = driver
        self.stack = stack
        # Not the test's tmp_path: pytest prunes old ones while other runs share the machine.
        self.screenshots = Path(os.environ.get("FACUSYNC_NOCODB_SCREENSHOTS") or
                                Path(tempfile.gettempdir()) / "facusync-nocodb-screenshots")
        self.screenshots.mkdir(parents=True, exist_ok=True)

    def until(self, what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = probe()
            except WebDriverException:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"screenshot {self.screenshot('timeout')}")
            time.sleep(0.2)

    def screenshot(self, name: str) -> Path:
        path = self.screenshots / f"{self.stack.version}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def picture_of_grid(self, name: str) -> Path:
        """A screenshot wide enough to show every column of the view (for the guide)."""
        size = self.driver.get_window_size()
        self.driver.set_window_size(2700, 900)
        time.sleep(1.0)
        self.focus(GRID_COLUMNS[1])  # scrolls the grid back to its first columns
        ActionChains(self.driver).send_keys(Keys.ESCAPE).perform()
        ActionChains(self.driver).move_to_element(self.grid()).perform()  # no tooltip
        time.sleep(1.5)
        path = self.screenshot(name)
        self.driver.set_window_size(size["width"], size["height"])
        time.sleep(1.0)
        return path

    def testid(self, testid: str) -> WebElement:
        return self.until(f"data-testid {testid}", lambda: self.driver.find_elements(
            By.CSS_SELECTOR, f'[data-testid="{testid}"]'))[0]

    def sign_in(self, email: str, password: str) -> None:
        self.driver.get(f"{self.stack.nocodb.url}/dashboard/#/signin")
        self.testid("nc-form-signin__email").send_keys(email)
        self.testid("nc-form-signin__password").send_keys(password)
        self.testid("nc-form-signin__submit").click()
        self.until("the sign-in to finish", lambda: "signin" not in self.driver.current_url)

    def open_view(self, title: str) -> None:
        """From the base, click through NocoDB's sidebar (source, table) to the view."""
        s = self.stack
        self.driver.get(f"{s.nocodb.url}/dashboard/#/nc/{s.base_id}")
        path = ("nc-sidebar-base-facusync", "nc-tbl-title-datos_seguimiento",
                f"view-sidebar-view-{title}")

        def click_deepest() -> bool:
            for depth, testid in reversed(list(enumerate(path))):
                found = self.driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
                if found and found[0].is_displayed():
                    found[0].click()
                    time.sleep(1.0)  # let the sidebar unfold before looking again
                    return depth == len(path) - 1
            return False

        self.until(f"view {title} in the sidebar", click_deepest)
        self.until(f"view {title} to open",
                   lambda: s.setup_report["views"][title] in self.driver.current_url)
        self.grid()
        self.until("the grid's rows", lambda: self.loaded_rows())

    def grid(self) -> WebElement:
        found: list[WebElement] = self.until("the grid", lambda: self.driver.find_elements(
            By.CSS_SELECTOR, '[data-testid="nc-grid-wrapper"] canvas'))
        return found[0]

    def focus(self, column: str) -> None:
        """Make the first row's `column` the grid's active cell."""
        canvas = self.grid()
        size = canvas.size
        ActionChains(self.driver).move_to_element_with_offset(
            canvas, -size["width"] / 2 + 150, -size["height"] / 2 + GRID_HEADER + GRID_ROW / 2,
        ).click().perform()
        time.sleep(0.3)
        for _ in range(GRID_COLUMNS.index(column)):
            ActionChains(self.driver).send_keys(Keys.ARROW_RIGHT).perform()
            time.sleep(0.05)

    def editor(self) -> str:
        """The tag of the cell editor NocoDB opened over the grid ("" when none)."""
        tag = self.driver.execute_script(
            "const e = document.activeElement; "
            "return e && ['INPUT', 'TEXTAREA'].includes(e.tagName) ? e.tagName : '';")
        return str(tag)

    def type_into(self, column: str, text: str) -> None:
        for _ in range(3):  # the grid may still be settling after a save or a reload
            self.focus(column)
            ActionChains(self.driver).send_keys(Keys.ENTER).perform()
            if self.until_editor(2.0):
                break
        else:
            raise AssertionError(f"no editor opened on {column}; screenshot "
                                 f"{self.screenshot('no-editor')}")
        ActionChains(self.driver).send_keys(text, Keys.ENTER).perform()
        ActionChains(self.driver).send_keys(Keys.ESCAPE).perform()

    def until_editor(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.editor():
                return True
            time.sleep(0.1)
        return False

    def toggle(self, column: str) -> None:
        self.focus(column)
        ActionChains(self.driver).send_keys(Keys.ENTER).perform()

    def reload_view(self) -> list[dict[str, Any]]:
        """Press the view's reload button; returns the rows the grid loaded again."""
        self.driver.execute_script("window.__responses = []")
        reload_icon = self.until("the reload button", lambda: self.driver.find_elements(
            By.CSS_SELECTOR, "svg.nc-icon-reload"))[0]
        reload_icon.find_element(By.XPATH, "..").click()
        return list(self.until("the grid's rows after the reload", self.loaded_rows))

    def loaded_rows(self) -> list[dict[str, Any]] | None:
        """The newest list of tracking rows NocoDB's page received."""
        view_id = self.stack.setup_report["views"]["Pendientes"]
        for url, text in reversed(self.driver.execute_script("return window.__responses") or []):
            if '"list"' not in text or '"conduce"' not in text or view_id not in url + text:
                continue
            answer = json.loads(text)
            rows = answer.get("list") if isinstance(answer, dict) else None
            if isinstance(rows, list) and rows and "trabajado" in rows[0]:
                return rows
        return None


def test_planner_works_in_the_grid(stack: Stack, planner: tuple[str, str],
                                   browser: WebDriver) -> None:
    started = time.monotonic()
    person = Planner(browser, stack)
    try:
        work_in_the_grid(stack, person, planner)
    except BaseException:
        print(f"screenshot of the failure: {person.screenshot('failure')}")
        raise
    MEASUREMENTS[f"{stack.version}: browser test (sign-in to last check)"] = \
        f"{time.monotonic() - started:.1f} s"


def work_in_the_grid(stack: Stack, person: Planner, planner: tuple[str, str]) -> None:
    person.sign_in(*planner)
    person.open_view("Pendientes")
    sidebar = person.driver.execute_script(
        "return Array.from(document.querySelectorAll('[data-testid^=\"view-sidebar-view-\"]'))"
        ".map(e => e.getAttribute('data-testid').slice('view-sidebar-view-'.length))")
    MEASUREMENTS[f"{stack.version}: views the planner's sidebar lists"] = ", ".join(sidebar)
    # The editor sees the four views only: no default view, nothing of datos_vista.
    assert sorted(sidebar) == sorted(VIEW_TITLES), sidebar
    first = person.loaded_rows()
    assert first, "the grid loaded no rows"
    conduce, second = first[0]["conduce"], first[1]["conduce"]
    row_id = tracking_row(stack, conduce)["id"]

    # The planner's four columns, typed into the grid, land in PostgreSQL.
    typed = {"nota": "Llamar antes de salir", "ruta": "Ruta Norte 3", "preparador": "Ana Pérez"}
    for column, text in typed.items():
        person.type_into(column, text)

        def landed(column: str = column, text: str = text) -> bool:
            return bool(tracking_row(stack, conduce)[column] == text)

        wait_for(f"{column} in PostgreSQL", landed, timeout=20)
        # NocoDB 0.301.3 redraws an edited row of a filtered view as "Row filtered" until
        # the view is reloaded; a planner reloads too.
        assert person.reload_view()[0]["conduce"] == conduce
    picture = person.picture_of_grid("pendientes")

    # An ERP cell (a lookup) opens no editor, and typing into it changes nothing anywhere.
    erp_before = stack.query("SELECT * FROM datos_vista WHERE conduce = %s", (conduce,))
    offset = stack.pg_log_offset()
    person.focus("cliente")
    ActionChains(person.driver).send_keys(Keys.ENTER).perform()
    assert not person.until_editor(1.5), "an editor opened on an ERP lookup cell"
    ActionChains(person.driver).send_keys("Cambiado", Keys.ENTER, Keys.ESCAPE).perform()
    time.sleep(1.0)
    assert stack.query("SELECT * FROM datos_vista WHERE conduce = %s", (conduce,)) == erp_before
    assert 'update "datos_vista"' not in stack.pg_log_since(offset)

    # A change at the source reaches the grid when the planner reloads it.
    new_name = f"Cliente renombrado en el ERP {stack.version}"
    stack.standin.update(conduce, cliente=new_name)
    wait_for("the consumer to apply the source's change", lambda: stack.query(
        "SELECT cliente FROM datos_vista WHERE conduce = %s", (conduce,))[0][0] == new_name,
        timeout=60, logs=stack.env_file.parent)
    shown = {row["conduce"]: row for row in person.reload_view()}
    assert shown[conduce]["cliente"] == new_name, shown[conduce]
    assert shown[conduce]["nota"] == typed["nota"]

    # Marked trabajado, the conduce leaves "Pendientes" (after the reload).
    person.toggle("trabajado")
    wait_for("trabajado in PostgreSQL", lambda: tracking_row(stack, conduce)["trabajado"] is True,
             timeout=20)
    remaining = person.reload_view()
    assert conduce not in [row["conduce"] for row in remaining]
    assert remaining[0]["conduce"] == second
    final = tracking_row(stack, conduce)
    assert {k: final[k] for k in typed} == typed and final["id"] == row_id
    # FACUSYNC_NOCODB_SCREENSHOT=docs/img/pendientes.png keeps the grid's picture for the guide.
    keep = os.environ.get("FACUSYNC_NOCODB_SCREENSHOT")
    if keep:
        shutil.copy(picture, keep)
