"""Names from the fleet (clip ids, camera names, quarantine details) reach the UI's Markdown as text."""

import re

from assets.ui import table_md


def test_untrusted_names_are_escaped_in_markdown_tables():
    md = table_md([{"key": "landing/v/x|y.mcap", "detail": "<img src=x onerror=alert(1)>\n[click](http://evil)",
                    "class": "clear_road", "n": 3, "score": 0.5}]).value  # fmt: skip
    row = md.splitlines()[2]
    assert row.count(" | ") == 4  # the pipe in the name did not add a column
    assert not re.search(r"(?<!\\)[<>\[\]]", row)  # every angle bracket and square bracket escaped: no tag, no link
    assert "\\<img src=x onerror=alert(1)\\> \\[click\\](http://evil)" in row  # one line: the newline dropped
    assert "| clear_road | 3 | 0.5000 |" in row  # plain names and numbers read as before
