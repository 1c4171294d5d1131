"""Which MLflow tracking server, if any, and the forms of its URI that are safe to show.

A tracking URI may carry credentials: `http://user:password@host:5000`. The HTTP client (requests, through
urllib3) takes the authority to end at the first '/', '?' or '#' and its user-info to end at the last '@'
inside it. A password may hold any of '/', '?', '#', '@' (or their %-escapes), and then the two readings
part: for `http://alice:s3/cr3t@host:5000` urllib3 sees the authority `alice:s3` (host `alice`, port `s3`)
and fails with a message that quotes it, and `urllib.parse` sees no user-info at all. So the credentials
here are everything between `//` and the LAST '@' of the whole URI: redaction can hide more than the HTTP
client's user-info (a path that holds '@'), never less.
"""

from __future__ import annotations

import os
import re
import urllib.parse

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
HIDDEN = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# What separates the pieces of a user-info in one parse or another (user:password, and a password cut
# where urllib3 ends the authority: '/', '\\', '?', '#').
_DELIMITERS = re.compile(r"[:/\\?#@\[\]\s]+")
# Characters left as they are when a URL is %-encoded again: by requests (requests.utils.requote_uri),
# and by urllib3 (the user-info, path and query characters of urllib3.util.url).
_SAFE_CHARACTERS = ("!#$%&'()*+,/:;=?@[]~", "!$&'()*+,;=:@/?")
# Left as they are in a run's page: a host, port and path (and %-escapes already there).
_PAGE_SAFE = "!$&'()*+,/:=@[]~%"
# Pieces this short are only hidden where they stand alone: searched inside words, a one-letter piece of a
# password would blank every such letter of a message.
_SHORT = 4


def tracking_uri_from(option: str | None) -> str | None:
    """The option's value, else $MLFLOW_TRACKING_URI; None (no MLflow at all) when neither is set."""
    return option or os.environ.get(TRACKING_URI_ENV) or None


def split_credentials(uri: str) -> tuple[str, str | None, str]:
    """(`scheme://`, the credentials or None, the rest: host, port, path...) of a URI.

    The credentials run from the scheme's `//` (or the start, without one) to the last '@'.
    """
    scheme = _SCHEME.match(uri)
    start = scheme.end() if scheme else 0
    at = uri.rfind("@", start)
    if at < 0:
        return uri[:start], None, uri[start:]
    return uri[:start], uri[start:at], uri[at + 1 :]


def misread_credentials(uri: str) -> str | None:
    """Why the HTTP client would not read the credentials of an http(s) URI as written, or None.

    With '/', '?', '#' or '\\' in the user-info, urllib3 ends the authority there: it fails, or worse,
    takes `user:pa` for a host and port and sends the rest of the password to that host as a path.
    """
    prefix, credentials, _ = split_credentials(uri)
    if credentials is None or prefix.lower() not in ("http://", "https://"):
        return None
    if any(character in credentials for character in "/?#\\"):
        return (
            "the user name and password (all before the last '@') hold '/', '?', '#' or '\\', where the HTTP "
            "client ends the server's address: write them %-encoded (%2F, %3F, %23, %5C), or set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
        )
    return None


def redacted(uri: str) -> str:
    """The URI without user name and password (http://user:secret@host/ -> http://host/), for logs and files."""
    prefix, credentials, rest = split_credentials(uri)
    return uri if credentials is None else prefix + rest


def run_page(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The address of a run's page in the MLflow UI of the server at `uri` (http or https), without the
    credentials, path parameters, query or fragment of the URI (a token or session may sit in any); None for a
    store that is not a server (a folder, a database). Visible ASCII only, %-encoded where need be: it is logged
    to a terminal, where a control character from the URI (or an id from the server) could drive it."""
    prefix, _, rest = split_credentials(uri)
    if prefix.lower() not in ("http://", "https://"):
        return None
    server = urllib.parse.quote(re.split(r"[?#;]", rest, maxsplit=1)[0].rstrip("/"), safe=_PAGE_SAFE)
    experiment, run = (urllib.parse.quote(part, safe="") for part in (experiment_id, run_id))
    return f"{prefix}{server}/#/experiments/{experiment}/runs/{run}"


def _spellings(text: str) -> set[str]:
    """`text` as a message may show it: as given, %-decoded, %-encoded (as requests re-quotes a URL), and
    escaped (as repr() shows it, for str and for bytes)."""
    forms = {text, urllib.parse.unquote(text)}
    for form in list(forms):
        forms.update(urllib.parse.quote(form, safe=safe) for safe in (*_SAFE_CHARACTERS, ""))
        forms.add(repr(form)[1:-1])
        forms.add(repr(form.encode("utf-8", "backslashreplace"))[2:-1])
    return {form for form in forms if form}


def credential_pieces(uri: str) -> list[str]:
    """Every spelling of the URI's credentials and of their pieces (user name, password, the parts of a
    password that one parse or another cuts off), longest first; none for a URI without credentials."""
    _, credentials, _ = split_credentials(uri)
    if not credentials:
        return []
    pieces = {credentials, urllib.parse.unquote(credentials)}
    for whole in list(pieces):
        pieces.update(piece for piece in _DELIMITERS.split(whole) if piece)
    spellings = {form for piece in pieces for form in _spellings(piece)}
    return sorted(spellings, key=lambda form: (-len(form), form))


def without_credentials(text: str, uri: str | None) -> str:
    """`text` (an error message, a log line) with the credentials of `uri` hidden wherever they appear, in
    any of the forms the HTTP client, MLflow or repr() give them; the URI itself becomes its redacted form."""
    if not uri:
        return text
    pieces = credential_pieces(uri)
    if not pieces:
        return text
    text = text.replace(uri, redacted(uri))
    for piece in pieces:
        if len(piece) >= _SHORT:
            text = text.replace(piece, HIDDEN)
        else:
            # A word on its own; an escape next to it (a space the HTTP client re-quoted as %20, a control
            # character repr() shows as \x1f) also bounds it.
            before = r"(?:(?<![^\W_])|(?<=%[0-9A-Fa-f]{2})|(?<=\\x[0-9A-Fa-f]{2})|(?<=\\u[0-9A-Fa-f]{4}))"
            after = r"(?:(?![^\W_])|(?=%[0-9A-Fa-f]{2})|(?=\\[xuU][0-9A-Fa-f]{2}))"
            text = re.sub(rf"{before}{re.escape(piece)}{after}", HIDDEN, text)
    return text
