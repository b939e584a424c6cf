"""Whole-video captions written by an LLM from a video's moment sentences (the TACoS-CG recipe).

Works with any OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`), using only the
standard library. Replies are cached on disk keyed by the hash of the request (so a rerun costs
nothing and is reproducible), transient HTTP failures are retried with exponential backoff, and
every caption is validated: junk the original generation let through (a lone "5", a fragment
like "Set in a kitchen", numbering, copies of an input sentence, duplicates) is rejected and the
model is asked again.

Config from the environment: C2F_LLM_BASE_URL, C2F_LLM_MODEL, C2F_LLM_API_KEY (or OPENAI_API_KEY).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from c2f_lib.data.coarse_captions import video_events
from c2f_lib.data.schema import MomentQuery, VideoCaptions
from c2f_lib.errors import UserError
from c2f_lib.progress import progress
from c2f_lib.utils import atomic_write_json

# Our wording of the TACoS-CG v2 prompt: K distinct one-sentence summaries of the whole video,
# separated by '###', from the fine-grained steps in temporal order.
SYSTEM_PROMPT = "You write short, factual descriptions of videos from lists of annotated actions."
USER_TEMPLATE = (
    "Below are the actions annotated in one video, in the order they happen.\n"
    "{steps}\n\n"
    "Write {k} different descriptions of the whole video. Each must be a single sentence that sums up "
    "the main activity from start to end, in your own words (do not copy an action verbatim), "
    "without mentioning the room or setting. Do not number them. "
    "Separate the descriptions with '###' and write nothing else."
)
_NUMBERING = re.compile(r"^\s*(?:[-*•]|\(?\d+[.):]|description\s*\d*\s*[:.-])\s*", re.IGNORECASE)
_RETRY_HTTP = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMCaptionError(UserError, RuntimeError):
    """The LLM endpoint failed or answered what cannot be used (network, key, model, reply)."""


@dataclass
class LLMConfig:
    base_url: str = ""                 # e.g. https://api.openai.com/v1 or http://localhost:8000/v1
    model: str = ""
    api_key: str = field(default="", repr=False)
    k: int = 5
    temperature: float = 0.7
    max_tokens: int = 300
    min_words: int = 5
    max_words: int = 60
    attempts: int = 4                  # model calls per video before giving up
    http_retries: int = 4              # retries of one call on network errors / 429 / 5xx
    backoff_s: float = 2.0             # first retry wait; doubles each retry
    timeout_s: float = 60.0
    cache_dir: str | None = None       # on-disk reply cache; None disables it

    @classmethod
    def from_env(cls, **overrides) -> "LLMConfig":
        env = {"base_url": os.environ.get("C2F_LLM_BASE_URL", ""), "model": os.environ.get("C2F_LLM_MODEL", ""),
               "api_key": os.environ.get("C2F_LLM_API_KEY", os.environ.get("OPENAI_API_KEY", ""))}
        env.update(overrides)
        return cls(**env)


def build_messages(sentences: list[str], k: int) -> list[dict[str, str]]:
    steps = "\n".join(f"- {s}" for s in sentences)
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(steps=steps, k=k)}]


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def split_reply(reply: str) -> list[str]:
    """Split on '###' (the recipe's separator), else on lines; strip numbering and bullets."""
    pieces = reply.split("###") if "###" in reply else reply.splitlines()
    return [_NUMBERING.sub("", p).strip().strip('"').strip() for p in pieces if p.strip()]


def validate_captions(candidates: list[str], sources: list[str], cfg: LLMConfig) -> tuple[list[str], list[tuple[str, str]]]:
    """(accepted, [(rejected, reason)]). Rejects numeric-only, too short/long, duplicate and
    copied-verbatim captions."""
    source_keys = {_normal(s) for s in sources}
    accepted, rejected, seen = [], [], set()
    for text in candidates:
        key, n_words = _normal(text), len(text.split())
        if not re.search(r"[A-Za-z]", text):
            reason = "no words"
        elif n_words < cfg.min_words:
            reason = f"too short ({n_words} words)"
        elif n_words > cfg.max_words:
            reason = f"too long ({n_words} words)"
        elif key in seen:
            reason = "duplicate"
        elif key in source_keys:
            reason = "copies an input sentence"
        else:
            seen.add(key)
            accepted.append(text if text.endswith((".", "!", "?")) else text + ".")
            continue
        rejected.append((text, reason))
    return accepted, rejected


class ChatClient:
    """Minimal OpenAI-compatible chat client (urllib) with retries and an on-disk reply cache."""

    def __init__(self, cfg: LLMConfig, sleep: Callable[[float], None] = time.sleep):
        if not cfg.base_url or not cfg.model:
            raise ValueError("LLM captions need a base_url and a model (set C2F_LLM_BASE_URL and C2F_LLM_MODEL)")
        self.cfg, self.sleep = cfg, sleep
        self.requests_sent = 0

    def _cache_file(self, payload: dict) -> Path | None:
        if not self.cfg.cache_dir:
            return None
        # Keyed by model, prompt and sampling settings, not by the server address (a local server's
        # port changes between runs).
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return Path(self.cfg.cache_dir) / f"{key[:32]}.json"

    def complete(self, messages: list[dict[str, str]], attempt: int = 0) -> str:
        """The reply text. `attempt` is part of the cache key so a retry after a rejected reply
        asks the model again instead of reading the same cached junk."""
        payload = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                   "max_tokens": self.cfg.max_tokens, "attempt": attempt}
        cache = self._cache_file(payload)
        if cache is not None and cache.is_file():
            return json.loads(cache.read_text())["reply"]
        body = {k: v for k, v in payload.items() if k != "attempt"}
        reply = self._post(body)
        if cache is not None:
            atomic_write_json(cache, {"request": payload, "reply": reply})
        return reply

    def _post(self, body: dict) -> str:
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        data = json.dumps(body).encode()
        for retry in range(self.cfg.http_retries + 1):
            try:
                self.requests_sent += 1
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                    answer = json.loads(response.read())
                return answer["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as err:
                if err.code not in _RETRY_HTTP or retry == self.cfg.http_retries:
                    detail = err.read()[:300].decode(errors="replace")
                    raise LLMCaptionError(f"HTTP {err.code}: {detail}", url) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if retry == self.cfg.http_retries:
                    raise LLMCaptionError(f"{err}", url) from None
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as err:
                raise LLMCaptionError(f"unexpected reply layout ({err!r})", url) from None
            self.sleep(self.cfg.backoff_s * 2 ** retry)
        raise AssertionError("unreachable")


def caption_video(client: ChatClient, sentences: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """K validated captions for one video (accumulated over up to cfg.attempts calls) and the
    rejected candidates. Raises LLMCaptionError when K valid captions are not reached."""
    cfg = client.cfg
    messages = build_messages(sentences, cfg.k)
    accepted: list[str] = []
    rejected: list[tuple[str, str]] = []
    for attempt in range(cfg.attempts):
        good, bad = validate_captions(split_reply(client.complete(messages, attempt)), sentences, cfg)
        rejected += bad
        accepted, dup = validate_captions(accepted + good, sentences, cfg)
        rejected += dup
        if len(accepted) >= cfg.k:
            return accepted[:cfg.k], rejected
    raise LLMCaptionError(f"only {len(accepted)} of {cfg.k} valid captions after {cfg.attempts} calls; "
                          f"rejected: {rejected[:5]}")


def llm_coarse_captions(moments: list[MomentQuery], cfg: LLMConfig,
                        sleep: Callable[[float], None] = time.sleep) -> list[VideoCaptions]:
    """K LLM-written whole-video captions per video of `moments` (one call per video, cached)."""
    client = ChatClient(cfg, sleep)
    by_video = video_events(moments)
    durations = {m.vid: m.duration for m in moments}
    records = []
    for vid, events in progress(by_video.items(), total=len(by_video), desc="LLM captions"):
        steps = [texts[0] for texts in events]     # one sentence per event, temporal order
        captions, rejected = caption_video(client, steps)
        records.append(VideoCaptions(vid=vid, captions=captions, duration=durations[vid],
                                     meta={"coarse_captions": f"llm:{cfg.model}", "rejected": len(rejected)}))
    return records


def config_summary(cfg: LLMConfig) -> dict:
    """The config without the key, for provenance."""
    return {k: v for k, v in asdict(cfg).items() if k != "api_key"}
