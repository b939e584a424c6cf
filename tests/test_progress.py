from __future__ import annotations

from tqdm import tqdm as text_tqdm

from c2f_lib.progress import is_headless, progress


def test_headless_uses_plain_text_bars(monkeypatch, capsys):
    monkeypatch.setenv("C2F_HEADLESS", "1")
    assert is_headless()
    bar = progress(range(3), desc="work")
    assert type(bar) is text_tqdm and list(bar) == [0, 1, 2]


def test_interactive_uses_auto_bars(monkeypatch):
    monkeypatch.setenv("C2F_HEADLESS", "0")
    assert not is_headless()
    assert list(progress(range(2), disable=True)) == [0, 1]


def test_headless_bars_write_to_stdout(monkeypatch, capsys):
    """In an executed notebook a stderr stream is a red box that reads as an error: bars go to stdout."""
    monkeypatch.setenv("C2F_HEADLESS", "1")
    for _ in progress(range(3), desc="fine stage", mininterval=0):
        pass
    out, err = capsys.readouterr()
    assert "fine stage" in out and "3/3" in out
    assert err == ""
