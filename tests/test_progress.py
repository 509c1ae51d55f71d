"""Progress bars: in place on a terminal, plain lines in a file or a pipe."""

import io

from flywheel import progress


def test_a_bar_in_a_file_writes_whole_lines(monkeypatch):
    out = io.StringIO()  # not a terminal, as `./dev demo > log`
    monkeypatch.setattr(progress.sys, "stderr", out)
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    b = progress.bar(total=3, desc="validate", unit="clip", progress=True)
    for _ in range(3):
        b.update(1)
    b.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b[" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("validate:") for line in lines)
    assert "3/3" in lines[-1]  # the last state stays in the log


def test_a_bar_is_quiet_unless_shown(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", out)
    b = progress.bar(total=2, desc="x", unit="it")
    b.update(2)
    b.close()
    assert out.getvalue() == ""
    with progress.shown():
        assert progress.enabled()
