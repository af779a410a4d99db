"""Opening an explorer page (explorer/index.html) in headless Chromium (the ``browser``
fixture, conftest.py) and reading its Bokeh document's named models."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def open_explorer(browser, html: Path, url: str | None = None) -> Iterator:
    """The page, offline, once Bokeh has drawn its nodes; on leaving, it asserts that the page
    raised no JavaScript error and asked for nothing outside the file. ``url``: the page's
    address with a hash (a shared view)."""
    assert html.is_file(), f"{html} was not made"
    context = browser.new_context(offline=True, viewport={"width": 1500, "height": 1000})
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url or html.as_uri())
    page.wait_for_function(
        "() => window.Bokeh && Bokeh.documents.length"
        " && Bokeh.documents[0].get_model_by_name('nodes')"
        " && Bokeh.documents[0].get_model_by_name('nodes').data.layer.length > 0",
        timeout=60_000,
    )
    # A small page inflates its cards when it opens; cards are read synchronously after that.
    page.wait_for_function("() => window.ib && window.ib.cardsReady", timeout=60_000)
    page.wait_for_timeout(300)
    yield page
    assert not errors, f"JavaScript errors: {errors}"
    assert all(u.startswith(("file:", "data:", "blob:")) for u in requests), requests
    context.close()


def model_value(page, name: str, expr: str):
    """``expr`` evaluated with ``m`` the document's model named ``name``."""
    return page.evaluate(
        f"() => {{ const m = Bokeh.documents[0].get_model_by_name('{name}'); return {expr}; }}"
    )
