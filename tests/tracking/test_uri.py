"""Tracking URIs with credentials: what is shown of them, read the way the HTTP client reads them."""

import re
import socket
import urllib.parse

import pytest
import requests
import urllib3
from hypothesis import example, given, settings
from hypothesis import strategies as st

from image_classifier.tracking.uri import credential_pieces, redacted, run_page, split_credentials, without_credentials

MARK = "QZX"  # every generated credential piece holds it at both ends; nothing else does
# What a password may hold that ends the authority (or the user-info) in one parse or another.
DELIMITERS = ["/", "?", "#", "@", ":", "%2F", "%40", "%3F", "%23", "%25", "/?#@"]
HOSTS = ["127.0.0.1", "localhost", "mlflow.example.com", "[::1]"]

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00%"), max_size=5)


@st.composite
def credentials(draw) -> tuple[str, list[str]]:
    """A user-info (user, or user:password) and its marked pieces."""
    pieces = [MARK + draw(_text) + MARK for _ in range(draw(st.integers(1, 4)))]
    joined = pieces[0]
    for index, piece in enumerate(pieces[1:]):
        joined += (":" if index == 0 else draw(st.sampled_from(DELIMITERS))) + piece
    return joined, pieces


@st.composite
def uris(draw) -> tuple[str, str, list[str]]:
    """(a tracking URI with credentials, the same URI without them, the credential pieces)."""
    userinfo, pieces = draw(credentials())
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(st.sampled_from(HOSTS)) + draw(st.sampled_from(["", ":5000", ":80"]))
    path = draw(st.sampled_from(["", "/", "/mlflow", "/a/b?x=1", "/a#top"]))
    return f"{scheme}://{userinfo}@{host}{path}", f"{scheme}://{host}{path}", pieces


@given(uris())
@settings(max_examples=400, deadline=None)
def test_redaction_removes_every_credential_piece_and_keeps_the_server(case):
    uri, server, pieces = case
    assert redacted(uri) == server
    assert MARK not in redacted(uri)
    _, userinfo, _ = split_credentials(uri)
    if any(c in userinfo for c in "/?#\\"):
        return  # the HTTP client ends the authority inside the password: it cannot read this URI as meant
    # Otherwise it reads the same user-info (up to the last '@') and the same server as redaction does.
    parsed = urllib3.util.parse_url(uri)
    assert urllib.parse.unquote(parsed.auth) == urllib.parse.unquote(userinfo)
    assert (parsed.host, parsed.port, parsed.path) == tuple(
        getattr(urllib3.util.parse_url(server), key) for key in ("host", "port", "path")
    )


@pytest.mark.parametrize(
    "uri, server",
    [
        ("http://alice:s3/cr3t@host:5000", "http://host:5000"),
        ("http://alice:s3?cr3t@host:5000/p", "http://host:5000/p"),
        ("http://alice:s3#cr3t@host", "http://host"),
        ("http://alice:s3@cr3t@host:5000", "http://host:5000"),
        ("http://alice:s3%2Fcr3t@host:5000", "http://host:5000"),
        ("http://alice@host:5000", "http://host:5000"),
        ("http://alice:s3://cr3t@host", "http://host"),
        ("postgresql://alice:s3/cr3t@db.example.com/mlflow", "postgresql://db.example.com/mlflow"),
        ("alice:s3/cr3t@host:5000", "host:5000"),  # no scheme: still hidden
        ("http://host:5000/path", "http://host:5000/path"),
        ("http://[::1:5000", "http://[::1:5000"),  # urllib.parse raises on this one; redaction does not
        ("file:///tmp/mlruns", "file:///tmp/mlruns"),
    ],
)
def test_redaction_of_known_shapes(uri, server):
    assert redacted(uri) == server


def test_what_urllib3_and_requests_make_of_a_slash_in_the_password():
    """The fact the redaction is built on: with '/' in the password, urllib3 ends the authority there and
    reads user and password start as host and port; its error quotes them."""
    uri = "http://alice:s3/cr3t@127.0.0.1:5000/api"
    with pytest.raises(urllib3.exceptions.LocationParseError, match="'alice:s3' is not a valid host or port"):
        urllib3.util.parse_url(uri)
    with pytest.raises(requests.exceptions.InvalidURL, match="alice:s3") as exc_info:
        requests.get(uri, timeout=5)
    assert split_credentials(uri) == ("http://", "alice:s3/cr3t", "127.0.0.1:5000/api")
    shown = without_credentials(str(exc_info.value), uri)
    assert not re.search(r"\balice\b|\bs3\b|cr3t", shown), shown


def test_the_http_client_sends_the_user_info_up_to_the_last_at_sign():
    """...and with '@' in the password, it takes the user-info up to the last '@' (as redaction does)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        parsed = urllib3.util.parse_url(f"http://alice:s3@cr3t@127.0.0.1:{port}/api")
        assert (parsed.auth, parsed.host, parsed.port) == ("alice:s3%40cr3t", "127.0.0.1", port)
        request = requests.Request("GET", f"http://alice:s3@cr3t@127.0.0.1:{port}/api").prepare()
        assert urllib.parse.urlsplit(request.url).hostname == "127.0.0.1"
        assert request.headers["Authorization"] == requests.auth._basic_auth_str("alice", "s3@cr3t")


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _no_piece_in(text: str, pieces: list[str]) -> bool:
    for piece in pieces:
        if len(piece) >= 4 and piece in text:
            return False
        if re.search(rf"(?<![^\W_]){re.escape(piece)}(?![^\W_])", text):
            return False
    return True


_short = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=5)


@given(
    user=_short,
    pieces=st.lists(st.one_of(_short, st.builds(lambda t: MARK + t + MARK, _text)), min_size=1, max_size=3),
    delimiters=st.lists(st.sampled_from(DELIMITERS), min_size=3, max_size=3),
)
@example(user="0", pieces=["0", MARK + " " + MARK], delimiters=["/", "/", "/"])  # a space re-quoted as %20
@example(user="0", pieces=["0", MARK + "\x1f" + MARK, "0"], delimiters=["@", "/", "/"])  # repr()'s \x1f
@settings(max_examples=150, deadline=None)
def test_no_error_of_the_http_client_shows_a_credential_piece(user, pieces, delimiters):
    """Whatever requests makes of the URI (it refuses it, or finds nobody listening), the message shown
    (as short_reason shows it) holds no piece of the credentials: long pieces nowhere, short ones not as
    words of their own."""
    from image_classifier.tracking.mlflow_client import short_reason

    password = pieces[0] + "".join(d + p for d, p in zip(delimiters, pieces[1:]))
    uri = f"http://{user}:{password}@127.0.0.1:{_dead_port()}"
    try:
        # Nothing listens there; but with '/' in the password, the client may go to another server
        # (`http://1:0/0@...` is host 1, port 0): connect() refuses such URIs (test_mlflow_client.py).
        answer = requests.get(uri + "/api/2.0/mlflow/experiments/get-by-name", timeout=5)
        failure = f"{answer.status_code} from {answer.url}"
    except Exception as exc:  # InvalidURL, ConnectionError, ...
        failure = exc
    # The parts one parse or another can cut the password into: at '/', '?', '#', '@' and ':', as written
    # or %-decoded ("%2F" is no cut as written, "%25" none at all).
    parts = {part for form in (password, urllib.parse.unquote(password)) for part in re.split("[/?#@:]", form)}
    texts = [str(failure), f"API request to {uri}/api failed with exception {failure}", repr(uri)]
    for text in texts:
        for shown in (short_reason(Exception(text), uri), without_credentials(text, uri)):
            assert _no_piece_in(shown, [user, *filter(None, parts)]) and MARK not in shown, (text, shown)


def test_pieces_are_every_spelling_of_user_and_password():
    pieces = credential_pieces("http://al%C3%AFce:s3/cr3t%40x@host")
    for expected in ("al%C3%AFce", "alïce", "s3", "cr3t%40x", "cr3t@x", "cr3t", "x"):
        assert expected in pieces
    assert credential_pieces("http://host:5000/a") == []
    assert without_credentials("Failed to parse: 'alice:s3' is not a valid host", "http://alice:s3/x@h") == (
        "Failed to parse: '***:***' is not a valid host"
    )
    # a piece this short is hidden where it stands alone, not inside words
    assert without_credentials("its pieces: 's', 'x'", "http://u:s/x@h") == "its pieces: '***', '***'"


@pytest.mark.parametrize(
    "uri, page",
    [
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000/#/experiments/1/runs/abc"),
        ("https://someone:pw-Zk9@mlflow.example.com/", "https://mlflow.example.com/#/experiments/1/runs/abc"),
        ("http://u:p@host:5000/mlflow?token=tk-9#x", "http://host:5000/mlflow/#/experiments/1/runs/abc"),
        ("file:///tmp/mlruns", None),
        ("sqlite:///mlflow.db", None),
    ],
)
def test_a_runs_page_is_on_the_server_without_credentials_query_or_fragment(uri, page):
    assert run_page(uri, "1", "abc") == page


@given(credentials(), st.sampled_from(HOSTS), st.text(max_size=8))
@settings(max_examples=300, deadline=None)
def test_a_runs_page_never_holds_a_piece_of_the_credentials(user_info, host, path):
    joined, _ = user_info
    page = run_page(f"http://{joined}@{host}:5000/{path}", "7", "r1")
    assert page is not None and MARK not in page and page.endswith("/#/experiments/7/runs/r1")


@given(st.text(min_size=4, max_size=12, alphabet=st.characters(codec="ascii", exclude_characters="/?#@;")))
@settings(max_examples=200, deadline=None)
def test_a_runs_page_never_holds_a_path_parameter(token):
    """A session or token in a path parameter (`;jsessionid=...`, as some auth proxies put it) is no part of the
    UI's address, and would sit in every log line that names the run."""
    page = run_page(f"https://u:p@host:5000/mlflow;jsessionid={token}", "7", "r1")
    assert page == "https://host:5000/mlflow/#/experiments/7/runs/r1"


@given(st.text(max_size=16))
@settings(max_examples=300, deadline=None)
def test_a_runs_page_is_printable_ascii_whatever_the_uri_holds(path):
    """It is logged to a terminal: a control character (an escape sequence) in the URI must not reach it."""
    page = run_page(f"http://host:5000/{path}", "7", "r1")
    assert page is not None and all(" " < character <= "~" for character in page), page
