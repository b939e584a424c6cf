"""LLM caption backend against a fake OpenAI-compatible server on 127.0.0.1 (no network)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from c2f_lib.data.llm_captions import (LLMCaptionError, LLMConfig, build_messages, llm_coarse_captions,
                                       split_reply, validate_captions)
from c2f_lib.data.schema import MomentQuery

GOOD = ("A cook washes and peels two kiwis, then slices them onto a plate. ### "
        "Someone prepares fresh kiwi slices from start to finish on a board. ### "
        "A person takes kiwis from the fridge, peels them and cuts them up. ### "
        "Two kiwis are cleaned, skinned and chopped into neat pieces. ### "
        "The video shows a person turning whole kiwis into a plate of slices.")
JUNK = "5 ### Set in a kitchen ### the person peels a kiwi ### 1. A cook peels and slices two kiwis for a snack."


class FakeChat:
    """Serves scripted (status, reply) pairs in order and records the requests it got."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, reply = fake.script.pop(0) if fake.script else (500, "script exhausted")
                payload = json.dumps({"choices": [{"message": {"content": reply}}]} if status == 200
                                     else {"error": reply}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_port}/v1"


def _moments():
    steps = ["the person gets out two kiwis", "the person peels a kiwi", "the person peels a kiwi",
             "the person cuts the kiwi into slices"]
    return [MomentQuery(qid=f"s30-d52_{i}", query=s, vid="s30-d52", duration=200.0,
                        relevant_windows=[[10.0 * i, 10.0 * i + 8]]) for i, s in enumerate(steps)]


def _config(url, tmp_path, **kw):
    return LLMConfig(base_url=url, model="fake-model", api_key="sk-test", k=5, backoff_s=0.001,
                     timeout_s=5, cache_dir=str(tmp_path / "cache"), **kw)


def test_junk_reply_is_rejected_then_good_reply_accepted(tmp_path):
    waits = []
    with FakeChat([(503, "busy"), (200, JUNK), (200, GOOD)]) as fake:
        records = llm_coarse_captions(_moments(), _config(fake.url, tmp_path), sleep=waits.append)
    assert len(fake.requests) == 3 and waits == [0.001]                       # one backoff for the 503
    assert fake.requests[0]["path"] == "/v1/chat/completions"
    assert fake.requests[0]["auth"] == "Bearer sk-test" and fake.requests[0]["body"]["model"] == "fake-model"
    captions = records[0].captions
    assert len(captions) == 5 and captions[0] == "A cook peels and slices two kiwis for a snack."
    assert "5" not in captions and not any(c.lower().startswith("set in") for c in captions)
    assert records[0].meta["rejected"] >= 3


def test_cache_makes_rerun_free(tmp_path):
    with FakeChat([(200, GOOD)]) as fake:
        first = llm_coarse_captions(_moments(), _config(fake.url, tmp_path))
    with FakeChat([]) as fake:                                               # would answer 500 if asked
        second = llm_coarse_captions(_moments(), _config(fake.url, tmp_path))
        assert fake.requests == []
    assert first[0].captions == second[0].captions


def test_gives_up_after_bounded_attempts(tmp_path):
    with FakeChat([(200, JUNK)] * 3) as fake:
        with pytest.raises(LLMCaptionError, match="valid captions after 3 calls"):
            llm_coarse_captions(_moments(), _config(fake.url, tmp_path, attempts=3))
        assert len(fake.requests) == 3


def test_client_error_is_not_retried(tmp_path):
    with FakeChat([(401, "bad key"), (200, GOOD)]) as fake:
        with pytest.raises(LLMCaptionError, match="HTTP 401"):
            llm_coarse_captions(_moments(), _config(fake.url, tmp_path))
        assert len(fake.requests) == 1


def test_validation_rules():
    cfg = LLMConfig(min_words=4)
    good, bad = validate_captions(split_reply("1. A man cooks eggs in a pan\n2) 42\n- A man cooks eggs in a pan\n"
                                              "the person peels a kiwi"), ["The person peels a kiwi."], cfg)
    assert good == ["A man cooks eggs in a pan."]
    assert [reason for _, reason in bad] == ["no words", "duplicate", "copies an input sentence"]


def test_prompt_lists_steps_in_order():
    user = build_messages(["gets kiwis", "peels kiwis"], k=5)[1]["content"]
    assert user.index("gets kiwis") < user.index("peels kiwis") and "5 different" in user and "###" in user
