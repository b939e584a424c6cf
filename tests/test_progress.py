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
