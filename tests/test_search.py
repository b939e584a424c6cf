"""Coarse-to-fine search on tiny random stores, with small stand-in models (and real ones when present)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from c2f_lib.data.schema import VideoCaptions, write_captions, write_moments
from c2f_lib.evaluation.vcmr import evaluate_vcmr
from c2f_lib.features.testing import make_random_store, random_records
from c2f_lib.pipeline.corpus_index import CorpusIndex, video_embeddings
from c2f_lib.pipeline.search import (Candidates, SearchConfig, assign_captions, coarse_temperature, load_split,
                                     localise, records_by_k, search, to_record)


class StandInCoarse(nn.Module):
    """The coarse contract in a few lines: cosine with the mean frame, or the best single frame."""

    def __init__(self, pool: str = "max"):
        super().__init__()
        self.pool = pool
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def score(self, text_emb, frames, chunk_size=16, generator=None):
        text = nn.functional.normalize(text_emb, dim=-1)                         # [T, D]
        if self.pool == "mean":
            return text @ nn.functional.normalize(frames.mean(1), dim=-1).T      # [T, V]
        per_frame = torch.einsum("td,vfd->tvf", text, nn.functional.normalize(frames, dim=-1))
        return per_frame.amax(-1)                                                # [T, V]


class StandInFine(nn.Module):
    """Saliency = cosine(clip, mean token); one window = the run of clips above half the peak."""

    def __init__(self):
        super().__init__()
        self.calls: list[list] = []

    def predict(self, samples, top_k=10):
        self.calls.append(samples)
        out = []
        for s in samples:
            query = s.token_feats.mean(0)
            sal = nn.functional.cosine_similarity(s.clip_feats, query[None], dim=-1)   # [L]
            peak = int(sal.argmax())
            lo = hi = peak
            while lo > 0 and sal[lo - 1] > sal[peak] / 2:
                lo -= 1
            while hi < len(sal) - 1 and sal[hi + 1] > sal[peak] / 2:
                hi += 1
            end = min((hi + 1) * s.clip_len, s.duration)
            windows = [[lo * s.clip_len, end, float(torch.sigmoid(4 * sal[peak]))],
                       [0.0, min(s.clip_len, s.duration), 0.01]][:top_k]
            out.append({"qid": s.qid, "query": s.query, "vid": s.vid, "pred_relevant_windows": windows,
                        "pred_saliency_scores": sal.tolist()})
        return out


def make_split(tmp_path, num_videos=8, queries_per_video=2, seed=0):
    moments, captions = random_records(num_videos, queries_per_video, seed=seed)
    store = make_random_store(tmp_path / "store.h5", moments, captions, dim=16, noise=0.3, seed=seed)
    moments_file = tmp_path / "moments_test.jsonl"
    write_moments(moments_file, moments)
    return store, moments_file, [m.to_json() for m in moments]


def load_signal_split(store, moments_file):
    """load_split, with the clips standing in for the frames: the random store ties moment queries to
    the clips of their window only, so this gives the coarse stage a signal to find (all videos 20 s)."""
    corpus, queries = load_split(store, moments_file)
    corpus.frames = torch.stack(corpus.clips)                                    # [V, L, D]
    return corpus, queries


def test_search_end_to_end_metrics(tmp_path):
    store, moments_file, gts = make_split(tmp_path)
    corpus, queries = load_signal_split(store, moments_file)
    cfg = SearchConfig(k_videos=3, fusion="product")
    fine = StandInFine()
    records = search(StandInCoarse(), fine, queries, corpus, cfg)
    assert len(records) == len(gts) and all(len(r["ranked_videos"]) == 8 for r in records)
    # only the shortlisted videos are searched; each moment lies in one of them
    for r in records:
        shortlist = {v for v, _ in r["ranked_videos"][:3]}
        assert {m[0] for m in r["moments"]} <= shortlist
        assert [m[3] for m in r["moments"]] == sorted((m[3] for m in r["moments"]), reverse=True)
    metrics = evaluate_vcmr(records, gts, ks=(1, 5), k_videos=(3,))
    assert metrics["VR-R@1"] > 50           # chance is 12.5
    assert metrics["SVMR-R@1-IoU0.5"] > 50  # the stand-in finds the boosted clips in the GT video
    assert 0 < metrics["VCMR-R@5-IoU0.5"] <= metrics["Ceiling@3"]
    # the GT sample carries its windows, other videos none
    samples = [s for call in fine.calls for s in call]
    gt_of = {q: v for q, v in zip(queries.qids, queries.gt_vids)}
    assert all((s.windows != []) == (s.vid == gt_of[s.qid]) for s in samples)


def test_vcmr_never_exceeds_ceiling(tmp_path):
    store, moments_file, gts = make_split(tmp_path, num_videos=10, seed=3)
    corpus, queries = load_signal_split(store, moments_file)
    cands = localise(StandInCoarse(), StandInFine(), queries, corpus, SearchConfig(k_videos=4))
    by_k = records_by_k(StandInCoarse(), cands, SearchConfig(k_videos=4), ks=(1, 2, 4))
    for k, records in by_k.items():
        m = evaluate_vcmr(records, gts, ks=(1, 10), k_videos=(k,))
        assert m["VCMR-R@10-IoU0.5"] <= m[f"Ceiling@{k}"]
        assert all({mm[0] for mm in r["moments"]} <= {v for v, _ in r["ranked_videos"][:k]} for r in records)


def test_fine_cache_runs_each_pair_once_and_changes_nothing(tmp_path):
    """Two coarse methods sharing a cache (the report's loop) get the candidates they get alone,
    and the fine model sees each distinct (query, video) pair once."""
    store, moments_file, _ = make_split(tmp_path, num_videos=10, seed=3)
    corpus, queries = load_signal_split(store, moments_file)
    cfg = SearchConfig(k_videos=4)
    alone = [localise(StandInCoarse(pool), StandInFine(), queries, corpus, cfg) for pool in ("max", "mean")]
    fine, cache = StandInFine(), {}
    shared = [localise(StandInCoarse(pool), fine, queries, corpus, cfg, fine_cache=cache) for pool in ("max", "mean")]
    assert shared == alone
    seen = [(s.qid, s.vid) for batch in fine.calls for s in batch]
    assert len(seen) == len(set(seen)) == len(cache)
    assert len(cache) < sum(len(c.fine) for cands in alone for c in cands) + len(queries) * 2


def test_two_query_mode_coarse_stage_uses_the_caption_fine_stage_the_moment(tmp_path):
    """The random store ties captions to their video's frames and moment sentences to nothing the
    coarse stage sees (plain frames): the videos are found from the caption, and only from it. The
    moment sentence is what localises inside them (its tokens match the clips of its window)."""
    moments, _ = random_records(num_videos=8, queries_per_video=3, seed=4)
    captions = [VideoCaptions(vid=f"vid{v:03d}", captions=[f"first caption of video {v}",
                                                           f"second caption of video {v}"], duration=20.0)
                for v in range(8)]
    store = make_random_store(tmp_path / "store.h5", moments, captions, dim=16, noise=0.3, seed=4)
    write_moments(tmp_path / "moments.jsonl", moments)
    write_captions(tmp_path / "captions.jsonl", captions)
    gts = [m.to_json() for m in moments]
    corpus, queries = load_split(store, tmp_path / "moments.jsonl", tmp_path / "captions.jsonl")
    fine = StandInFine()
    two = search(StandInCoarse(), fine, queries, corpus, SearchConfig(k_videos=2, coarse_query="caption"))
    single = search(StandInCoarse(), StandInFine(), queries, corpus, SearchConfig(k_videos=2))
    two_m, single_m = evaluate_vcmr(two, gts, ks=(1,)), evaluate_vcmr(single, gts, ks=(1,))
    assert (two_m["query_mode"], single_m["query_mode"]) == ("two", "single")
    assert two_m["VR-R@1"] > 90 and single_m["VR-R@1"] < 50       # chance is 12.5
    assert two_m["VCMR-R@1-IoU0.5"] > single_m["VCMR-R@1-IoU0.5"]
    by_vid = {c.vid: c.captions for c in captions}
    assert all(r["coarse_query"] in by_vid[r["gt_vid"]] and r["query"] == q.query for r, q in zip(two, moments))
    assert all("coarse_query" not in r for r in single)
    # the fine stage got the moment sentence and its tokens, never the caption
    samples = [s for call in fine.calls for s in call]
    token_of = {q: t for q, t in zip(queries.qids, queries.tokens)}
    assert {s.query for s in samples} == {m.query for m in moments}
    assert all(s.token_feats is token_of[s.qid] for s in samples)


def test_assign_captions_and_two_query_errors(tmp_path):
    caps = [VideoCaptions("a", ["a1", "a2"]), VideoCaptions("b", ["b1"])]
    assert assign_captions(["a", "b", "a", "a", "b"], caps) == ["a1", "b1", "a2", "a1", "b1"]
    with pytest.raises(KeyError, match="no caption for video 'c'"):
        assign_captions(["a", "c"], caps, "caps.jsonl")
    with pytest.raises(ValueError, match="coarse_query"):
        SearchConfig(coarse_query="video")
    store, moments_file, _ = make_split(tmp_path, num_videos=3)
    corpus, queries = load_split(store, moments_file)  # no captions file
    with pytest.raises(ValueError, match="captions_jsonl"):
        localise(StandInCoarse(), StandInFine(), queries, corpus, SearchConfig(k_videos=2, coarse_query="caption"))


def _hand_candidates():
    fine = {"a": {"pred_relevant_windows": [[0.0, 2.0, 0.5]]},
            "b": {"pred_relevant_windows": [[4.0, 6.0, 0.9]]}}
    return Candidates(qid=1, query="q", gt_vid="a", ranked=[("a", 2.0), ("b", 0.0)], fine=fine)


@pytest.mark.parametrize("fusion, alpha, first", [("fine", 0.5, "b"), ("product", 0.5, "a"),
                                                   ("weighted", 0.5, "a"), ("weighted", 0.0, "b")])
def test_fusion_orders(fusion, alpha, first):
    # temperature 1: p(a) = e^2 / (e^2 + 1) = 0.881, p(b) = 0.119
    cfg = SearchConfig(k_videos=2, fusion=fusion, alpha=alpha, temperature=1.0)
    record = to_record(_hand_candidates(), cfg, coarse_temperature(None, cfg))
    assert record["moments"][0][0] == first
    if fusion == "product":
        p_a = math.exp(2) / (math.exp(2) + 1)
        assert record["moments"][0][3] == pytest.approx(p_a * 0.5)
        assert record["moments"][1][3] == pytest.approx((1 - p_a) * 0.9)


def test_learned_temperature_and_config_errors():
    assert coarse_temperature(StandInCoarse(), SearchConfig()) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="fusion"):
        SearchConfig(fusion="max")
    with pytest.raises(ValueError, match="shortlist_size"):
        SearchConfig(k_videos=10, shortlist_size=5)
    unsearched = Candidates(1, "q", "a", [("a", 1.0), ("c", 0.0)], {"a": {"pred_relevant_windows": []}})
    with pytest.raises(ValueError, match="localise"):
        to_record(unsearched, SearchConfig(k_videos=2), 1.0)


def test_faiss_shortlist_matches_exhaustive_for_mean_pooling(tmp_path):
    store, moments_file, _ = make_split(tmp_path, num_videos=12, seed=1)
    corpus, queries = load_split(store, moments_file)
    index = CorpusIndex.build(video_embeddings(corpus.frames), corpus.video_ids)
    fine = StandInFine()
    coarse = StandInCoarse(pool="mean")  # ranks exactly like the index's mean embeddings
    exhaustive = search(coarse, fine, queries, corpus, SearchConfig(k_videos=3))
    shortlisted = search(coarse, fine, queries, corpus,
                         SearchConfig(k_videos=3, shortlist_size=5), index=index)
    for e, s in zip(exhaustive, shortlisted):
        assert len(s["ranked_videos"]) == 5
        assert [v for v, _ in s["ranked_videos"]] == [v for v, _ in e["ranked_videos"][:5]]
        assert [m[:3] for m in s["moments"]] == [m[:3] for m in e["moments"]]
        assert [m[3] for m in s["moments"]] == pytest.approx([m[3] for m in e["moments"]], rel=1e-4)


def test_real_models_plug_in(tmp_path):
    """The registered coarse/fine models satisfy the contracts search relies on."""
    from c2f_lib.models.registry import build_model

    pytest.importorskip("c2f_lib.models.xpool")
    pytest.importorskip("c2f_lib.models.moment_detr")
    coarse = build_model("xpool", {"dim": 16})
    fine = build_model("moment_detr", {"video_dim": 16, "text_dim": 16, "hidden_dim": 16,
                                       "n_heads": 2, "ffn_dim": 32, "num_queries": 4})
    store, moments_file, gts = make_split(tmp_path, num_videos=5)
    corpus, queries = load_split(store, moments_file)
    records = search(coarse, fine, queries, corpus, SearchConfig(k_videos=2, moments_per_video=3))
    metrics = evaluate_vcmr(records, gts, ks=(1, 5))
    assert metrics["num_queries"] == len(gts)
    assert all(len(r["moments"]) == 6 and len(r["gt_moments"]) == 3 for r in records)


@pytest.mark.slow
def test_cli_index_and_search_own_videos(tmp_path, capsys):
    """`c2f index` on two tiny PyAV-written mp4s (+ one broken file), then `c2f search`."""
    import json

    from c2f_lib.cli import main as c2f
    from c2f_lib.features.backbone_specs import load_backbone
    from c2f_lib.features.testing import write_numbered_video
    from c2f_lib.features.tiny_clip import TinyClipConfig, TinyVideoClip, save_tiny_clip
    from c2f_lib.models.registry import build_model, save_model

    pytest.importorskip("c2f_lib.models.moment_detr")
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    write_numbered_video(videos / "a.mp4", num_frames=40, fps=10.0)
    write_numbered_video(videos / "sub" / "b.mp4", num_frames=25, fps=10.0)
    (videos / "broken.mp4").write_bytes(b"not a video")
    torch.manual_seed(0)
    clip_ckpt = tmp_path / "tinyclip.pt"
    save_tiny_clip(clip_ckpt, TinyVideoClip(TinyClipConfig(width=16, text_width=64, text_layers=1)), {})
    backbone = load_backbone(f"tinyclip:{clip_ckpt}")
    fine = build_model("moment_detr", {"video_dim": backbone.embed_dim, "text_dim": backbone.token_dim,
                                       "hidden_dim": 16, "n_heads": 2, "ffn_dim": 32, "num_queries": 4})
    save_model(tmp_path / "fine.pt", fine)
    index_dir = tmp_path / "index"
    assert c2f(["index", str(videos), "--backbone", f"tinyclip:{clip_ckpt}", "--fine", str(tmp_path / "fine.pt"),
                "--out", str(index_dir), "--num-frames", "4", "--clip-len", "1.0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "skipped broken" in err
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert sorted(manifest["videos"]) == ["a", "sub/b"] and "broken" in manifest["skipped"]
    assert c2f(["search", "the white blocks", "--index", str(index_dir), "--k-videos", "2", "--json",
                "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {v for v, _ in record["ranked_videos"]} == {"a", "sub/b"}
    assert record["moments"] and all(0 <= m[1] < m[2] <= 4.0 + 1e-6 for m in record["moments"])
    assert len(record["saliency"]["a"]) == 4  # 4 s of video, 1 s clips
    assert c2f(["search", "x", "--index", str(tmp_path / "nowhere")]) == 2
    assert "c2f index DIR" in capsys.readouterr().err


def _tiny_clip_and_fine(tmp_path):
    """A tiny CLIP checkpoint and a Moment-DETR that reads its features (sizes: 64 and its token width)."""

    from c2f_lib.features.backbone_specs import load_backbone
    from c2f_lib.features.tiny_clip import TinyClipConfig, TinyVideoClip, save_tiny_clip
    from c2f_lib.models.registry import build_model, save_model

    torch.manual_seed(0)
    clip_ckpt = tmp_path / "tinyclip.pt"
    save_tiny_clip(clip_ckpt, TinyVideoClip(TinyClipConfig(width=16, text_width=32, text_layers=1)), {})
    backbone = load_backbone(f"tinyclip:{clip_ckpt}")
    for name, text_dim in (("fine.pt", backbone.token_dim), ("wide_text.pt", backbone.token_dim * 2)):
        save_model(tmp_path / name, build_model("moment_detr", {
            "video_dim": backbone.embed_dim, "text_dim": text_dim, "hidden_dim": 16, "n_heads": 2, "ffn_dim": 32,
            "num_queries": 4}))
    return clip_ckpt


@pytest.mark.slow
def test_cli_index_matches_videos_by_content_and_refuses_bad_input_early(tmp_path, capsys):
    """Defect 4: `c2f index` matched videos by file name, so a replaced video kept its old features and
    duration. Also: an unusable --fine, a text-width mismatch, tinyclip without its checkpoint, a missing
    folder and a store of other settings are one-line errors (status 2), found before any extraction."""
    import json

    from c2f_lib.cli import main as c2f
    from c2f_lib.features.testing import write_numbered_video
    from c2f_lib.pipeline.search import load_corpus

    pytest.importorskip("c2f_lib.models.moment_detr")
    clip_ckpt = _tiny_clip_and_fine(tmp_path)
    videos, out = tmp_path / "videos", tmp_path / "index"
    videos.mkdir()
    write_numbered_video(videos / "a.mp4", num_frames=40, fps=10.0)
    write_numbered_video(videos / "b.mp4", num_frames=30, fps=10.0)
    index = ["index", str(videos), "--backbone", f"tinyclip:{clip_ckpt}", "--out", str(out), "--num-frames", "4",
             "--clip-len", "1.0", "--device", "cpu"]
    assert c2f(index + ["--fine", str(tmp_path / "fine.pt")]) == 0
    assert load_corpus(out / "features.h5", ["a", "b"]).durations == [4.0, 3.0]
    capsys.readouterr()

    write_numbered_video(videos / "a.mp4", num_frames=60, fps=10.0)          # same name, another video
    assert c2f(index) == 0
    captured = capsys.readouterr()
    assert "re-extracted a: its file changed" in captured.err and "b:" not in captured.err
    assert "(0 skipped, 1 re-extracted)" in captured.out
    assert load_corpus(out / "features.h5", ["a", "b"]).durations == [6.0, 3.0]

    def refused(argv, expected):
        assert c2f(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
        return err[0]

    refused(index + ["--fine", str(tmp_path / "wide_text.pt")], "reads text tokens of width 64, the index's "
            "backbone gives 32; index with the backbone it was trained on")
    refused(index + ["--fine", str(clip_ckpt)], "not a usable fine checkpoint")
    refused(index + ["--fine", str(tmp_path / "none.pt")], "fine checkpoint not found")
    refused(["index", str(videos), "--backbone", "tinyclip", "--out", str(out)], "needs its checkpoint here")
    refused(["index", str(tmp_path / "missing")], f"folder not found, {tmp_path / 'missing'}")
    refused(index + ["--frames-per-clip", "2"], "built with other settings")
    refused(index + ["--motion", "--frames-per-clip", "1"], "needs --frames-per-clip 2 or more")
    line = refused(["search", "a clock", "--index", str(out), "--fine", str(tmp_path / "wide_text.pt"),
                    "--device", "cpu"], "reads text tokens of width 64")
    assert line.startswith("c2f search: ") and line.endswith("wide_text.pt:--fine")
    # Issue 18 (collisions): a second `c2f index` into a held folder is refused naming the holder; a search
    # while another process writes the store says so (it used to advise deleting the store)
    from c2f_lib.run_lock import folder_lock

    with folder_lock(out):
        refused(index, f"in use by process {os.getpid()}")
    writer = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'a'); "
                               "print('open', flush=True); time.sleep(60)", str(out / "features.h5")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        line = refused(["search", "a clock", "--index", str(out), "--device", "cpu"],
                       "the store is open for writing in another process")
        assert "delete" not in line and line.endswith("features.h5")
    finally:
        writer.kill()
        writer.wait()
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            c2f(["search", "x", "--index", str(out), "--device", "cuda"])
        assert "argument --device: device 'cuda' requested but no CUDA device is visible" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["videos"]) == ["a", "b"]


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """A model away from its identity initialisation, so that pooling depends on the text."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.mark.parametrize("name, config", [("xpool", {"dim": 16, "num_heads": 2}),
                                          ("meanpool", {"dim": 16})])
def test_prepared_gallery_equals_plain_scores(name, config):
    """Re-ranking through per-video terms prepared once = the plain model's `score` on the same pairs."""
    from c2f_lib.models.registry import build_model
    from c2f_lib.pipeline.rerank import FramesGallery, prepare_gallery

    coarse = _perturbed(build_model(name, config))
    gen = torch.Generator().manual_seed(1)
    frames, text = torch.randn(30, 5, 16, generator=gen), torch.randn(7, 16, generator=gen)
    candidates = torch.randint(0, 30, (7, 9), generator=gen)                    # [T, S]
    gallery = prepare_gallery(coarse, frames)
    assert not isinstance(gallery, FramesGallery)  # the fast path, not the per-query fallback
    plain = coarse.score(text, frames).gather(1, candidates)                    # [T, S]
    torch.testing.assert_close(gallery.rerank(text, candidates, chunk_size=3), plain, atol=1e-5, rtol=0)


def test_shortlisted_xpool_ranking_equals_plain_model(tmp_path):
    """rank_videos with a shortlist (gallery prepared per call or once per corpus) ranks the
    shortlist exactly as the plain model scores it."""
    from c2f_lib.models.registry import build_model
    from c2f_lib.pipeline.rerank import prepare_gallery
    from c2f_lib.pipeline.search import rank_videos

    store, moments_file, _ = make_split(tmp_path, num_videos=12, seed=2)
    corpus, queries = load_split(store, moments_file)
    coarse = _perturbed(build_model("xpool", {"dim": 16}))
    index = CorpusIndex.build(video_embeddings(corpus.frames), corpus.video_ids)
    cfg = SearchConfig(k_videos=3, shortlist_size=5)
    plain = coarse.score(queries.sentence, corpus.frames)                       # [T, V]
    for gallery in (None, prepare_gallery(coarse, corpus.frames)):
        scores, order = rank_videos(coarse, queries.sentence, corpus, cfg, index, gallery)
        _, shortlist = index.search(queries.sentence, 5)
        assert order.shape == (len(queries), 5)
        assert all(set(o.tolist()) == set(s.tolist()) for o, s in zip(order, shortlist))
        torch.testing.assert_close(scores, plain.gather(1, order), atol=1e-5, rtol=0)
        assert (scores[:, :-1] >= scores[:, 1:]).all()
