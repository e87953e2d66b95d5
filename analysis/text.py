"""Strings that came from the logs, made safe to show.

Folder and file names, condition names, error lines and config values are data, not markup:
- printable(): a name that is not valid UTF-8 (os.walk hands it over with surrogate escapes) is
  shown with its bytes escaped (\\xff), control characters and newlines as escapes too, so the
  report, results.json and summary.csv can always be written;
- md(): additionally escaped for markdown and HTML, so a name like `<script>` or `[x](y)` is
  shown as text and never becomes a tag, a link, a table cell border or a broken code span.
"""
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MD = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "&#96;", "[": "&#91;", "]": "&#93;", "|": "&#124;"}
_MD_RE = re.compile("[" + re.escape("".join(_MD)) + "]")


def printable(s):
    """s with undecodable bytes and control characters shown as backslash escapes."""
    s = str(s)
    if any("\udc80" <= ch <= "\udcff" for ch in s):
        s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)


def md(s):
    """printable(s), escaped for markdown and HTML."""
    return _MD_RE.sub(lambda m: _MD[m.group()], printable(s))
