"""/docs in a real browser (headless Chromium): the page renders from the service alone (its Swagger UI
files come from the package, not a CDN this machine cannot reach), and its Authorize button is how the
token reaches the routes that need it."""

from __future__ import annotations

import json
import os

import pytest

from tests.serving.chromium import Chromium, chromium_path
from tests.serving.conftest import running_server

pytestmark = [
    pytest.mark.slow,
    # CI installs chromium (.ci/run), so there a missing browser is a failure, never a silent skip.
    pytest.mark.skipif(
        chromium_path() is None and os.environ.get("CI") != "true",
        reason="needs Debian's chromium package (apt-get install chromium)",
    ),
]

TOKEN = "tok-docs-7c1e"

# Helpers in the page: wait for a selector, click, and type into a React input (its own setter, then an event).
HELPERS = """
const until = async (find, what) => {
  const started = Date.now();
  while (Date.now() - started < 60000) {
    const found = find();
    if (found) return found;
    await new Promise(resolve => setTimeout(resolve, 100));
  }
  throw new Error('timed out waiting for ' + what);
};
const one = (selector, root = document) => until(() => root.querySelector(selector), selector);
const type = (input, text) => {
  Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(input, text);
  input.dispatchEvent(new Event('input', {bubbles: true}));
};
const tryReady = async () => {
  const block = await one('#operations-status-ready_ready_get');
  if (!block.classList.contains('is-open')) block.querySelector('.opblock-summary-control').click();
  const tryOut = await one('#operations-status-ready_ready_get .try-out__btn');
  if (tryOut.textContent.trim() === 'Try it out') tryOut.click();
  const clear = block.querySelector('button.btn-clear');
  if (clear) clear.click();  // the previous answer goes: the one awaited below is the new one
  await until(() => !block.querySelector('.live-responses-table'), 'the previous answer to clear');
  (await one('button.execute', block)).click();
  return (await one('.live-responses-table tbody .response-col_status', block)).textContent.trim();
};
"""


def page_script(body: str) -> str:
    return f"(async () => {{ {HELPERS} {body} }})()"


def test_the_docs_page_renders_and_its_authorize_button_sends_the_token(trained_run, tmp_path):
    with running_server(tmp_path, "--model", str(trained_run), env={"SERVE_TOKEN": TOKEN}) as server:
        browser = Chromium(chromium_path())
        try:
            browser.open(server.url + "/docs")
            paths = browser.evaluate(
                page_script(
                    "await one('.opblock-summary-path');"
                    "return [...document.querySelectorAll('.opblock-summary-path')].map(e => e.dataset.path);"
                )
            )
            assert {"/predict", "/predict/batch", "/ready", "/metadata"} <= set(paths), paths
            assert browser.evaluate(page_script("return await tryReady();")) == "401"
            authorized = page_script(
                "(await one('.auth-wrapper .authorize')).click();"
                "type(await one('.modal-ux input#auth-bearer-value'), " + json.dumps(TOKEN) + ");"
                "(await one('.modal-ux .auth-btn-wrapper .authorize')).click();"
                "(await one('.modal-ux .btn-done')).click();"
                "return await tryReady();"
            )
            assert browser.evaluate(authorized) == "200"
        finally:
            browser.close()
