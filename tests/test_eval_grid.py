"""The layer-grid job and its report, end to end on real data with a tiny model."""

import json

import pytest

from tp_rag.testing import save_tiny_model
from tp_rag_eval import grid, grid_report
from tp_rag_eval.common import default_data_root

DATA = default_data_root()
pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    if not (DATA / "beir" / "scifact").is_dir() or not (DATA / "senteval").is_dir():
        pytest.skip(f"evaluation data not found at {DATA} (set TP_RAG_DATA)")
    root = tmp_path_factory.mktemp("grid")
    model = save_tiny_model(root / "tiny", arch="llama")
    out = root / "out"
    grid.main(["--data", str(DATA), "--out", str(out), "--model", str(model), "--device", "cpu",
               "--max-docs", "60", "--max-queries", "8", "--sts-limit", "30", "--tp-exits", "2", "3",
               "--prompts", "prompteol", "passage_eol", "--sts-prompts", "prompteol", "--max-length", "96",
               "--cache-dir", str(root / "layers")])
    return out


def test_grid_scores_every_layer_and_selects_on_train(grid_run):
    cells = json.loads((grid_run / "grid.json").read_text())["results"]
    assert len(cells) == 2 * 3  # two prompts x (vanilla, tp 1..2, tp 1..3)
    for cell in cells:
        assert len(cell["scifact_ndcg10"]["train"]) == len(cell["scifact_ndcg10"]["test"]) == 4
    assert "sts_spearman" in cells[0] and "sts_spearman" not in cells[3]
    runs = json.loads((grid_run / "runs.json").read_text())["results"]
    assert set(runs) == {"prompteol/vanilla", "prompteol/tp", "passage_eol/vanilla", "passage_eol/tp"}
    tp_cells = [c for c in cells[:3] if c["settings"]["token_prepending"]]
    best = max(max(c["scifact_ndcg10"]["train"]) for c in tp_cells)
    assert runs["prompteol/tp"]["train_ndcg10"] == best
    chosen = runs["prompteol/tp"]["settings"]
    cell = next(c for c in tp_cells if c["settings"]["tp_exit"] == chosen["tp_exit"])
    assert cell["scifact_ndcg10"]["train"][chosen["output_layer"] - 1] == best
    for entry in runs.values():
        assert len(entry["run"]) == 8 and all(len(hits) <= 100 for hits in entry["run"].values())
    assert all(c["seconds_per_doc"] > 0 and c["seconds_per_query"] > 0 for c in cells)


def test_grid_rerun_reuses_stored_states(grid_run, tmp_path):
    layers = grid_run.parent / "layers"
    # (vanilla, tp 1..2, tp 1..3) x (queries, prompteol docs, passage docs); the query side is
    # the same for both prompts, so it is stored once per row.
    assert len(list(layers.glob("*.layers.npy"))) == 3 * 3
    before = {p: p.stat().st_mtime_ns for p in layers.glob("*.layers.npy")}
    out = tmp_path / "again"
    grid.main(["--data", str(DATA), "--out", str(out), "--model", str(grid_run.parent / "tiny"),
               "--device", "cpu", "--max-docs", "60", "--max-queries", "8", "--sts-limit", "30",
               "--tp-exits", "2", "3", "--prompts", "prompteol", "--sts-prompts", "knowledge",
               "--max-length", "96", "--cache-dir", str(layers)])
    assert {p: p.stat().st_mtime_ns for p in layers.glob("*.layers.npy")} == before
    first = json.loads((grid_run / "grid.json").read_text())["results"][:3]
    again = json.loads((out / "grid.json").read_text())["results"]
    assert [c["scifact_ndcg10"] for c in again] == [c["scifact_ndcg10"] for c in first]
    assert [c["seconds_per_doc"] for c in again] == [c["seconds_per_doc"] for c in first]


def test_report_scores_runs_with_beir(grid_run, tmp_path):
    grid_report.main(["--grid", str(grid_run), "--data", str(DATA), "--out", str(tmp_path / "t.md")])
    scores = json.loads((grid_run / "scores.json").read_text())
    rows = {r["system"]: r for r in scores["retrieval"]}
    assert set(rows) == {"prompteol/vanilla", "prompteol/tp", "passage_eol/vanilla", "passage_eol/tp"}
    for row in rows.values():
        assert 0 <= row["NDCG@10"] <= 100 and 0 <= row["Recall@100"] <= 100
    # The harness's NDCG@10 on the chosen layer equals the grid's own test score of that cell.
    cells = json.loads((grid_run / "grid.json").read_text())["results"]
    chosen = rows["prompteol/vanilla"]["settings"]
    own = cells[0]["scifact_ndcg10"]["test"][chosen["output_layer"] - 1]
    assert rows["prompteol/vanilla"]["NDCG@10"] == pytest.approx(own, abs=0.01)
    assert [r["system"] for r in scores["sts"]] == ["prompteol/vanilla", "prompteol/tp"]
    assert "| prompteol/tp |" in (tmp_path / "t.md").read_text()


def test_retrieval_ideas_recombine_stored_states(grid_run, tmp_path):
    from tp_rag_eval import retrieval_ideas

    retrieval_ideas.main(["--grid", str(grid_run), "--data", str(DATA),
                          "--cache-dir", str(grid_run.parent / "layers"), "--out", str(tmp_path)])
    rows = {r["idea"]: r for r in json.loads((tmp_path / "ideas.json").read_text())["results"]}
    for prompt in ("prompteol", "passage_eol"):
        for idea in ("vanilla", "tp", "tp docs only", "tp queries only"):
            assert f"{prompt}/{idea}" in rows
    assert {"average prompteol+passage_eol docs/vanilla", "average prompteol+passage_eol docs/tp", "bm25"} <= set(rows)
    # Same selection as the grid job itself: same train score and setting.
    runs = json.loads((grid_run / "runs.json").read_text())["results"]
    for name in ("prompteol/vanilla", "prompteol/tp", "passage_eol/tp"):
        assert rows[name]["train_ndcg10"] == pytest.approx(runs[name]["train_ndcg10"], abs=1e-3)
        assert rows[name]["setting"].endswith(f"layer {runs[name]['settings']['output_layer']}")
    hybrids = [r for name, r in rows.items() if name.startswith("bm25 + ")]
    assert len(hybrids) == 2
    for r in hybrids:  # the fusion reported is the train optimum over every option tried
        assert len(r["train_by_option"]) == len(retrieval_ideas.ALPHAS) + 1
        assert r["train_ndcg10"] == pytest.approx(max(r["train_by_option"].values()), abs=1e-3)
        assert r["ms_per_query"] > rows["bm25"]["ms_per_query"] > 0
    assert "| bm25 |" in (tmp_path / "IDEAS.md").read_text()
    from tp_rag_eval.report import ideas_lines

    rendered = "\n".join(ideas_lines([tmp_path / "ideas.json"]))
    assert "| prompteol/tp docs only |" in rendered and "8 test queries" in rendered


def test_retrieval_ideas_refuse_missing_states(grid_run, tmp_path):
    from tp_rag_eval import retrieval_ideas

    with pytest.raises(SystemExit, match="not in"):
        retrieval_ideas.main(["--grid", str(grid_run), "--data", str(DATA),
                              "--cache-dir", str(tmp_path / "empty"), "--out", str(tmp_path)])


def _scifact():
    folder = DATA / "beir" / "scifact"
    if not folder.is_dir():
        pytest.skip(f"evaluation data not found at {DATA} (set TP_RAG_DATA)")
    return folder


@pytest.mark.parametrize("agg", ["max", "mean"])
def test_chunked_documents_score_by_their_chunks(agg):
    import numpy as np

    plain = grid.Retrieval(_scifact(), max_docs=40, max_queries=4)
    chunked = grid.Retrieval(_scifact(), max_docs=40, max_queries=4, chunk_words=30, chunk_agg=agg)
    assert chunked.corpus_ids == plain.corpus_ids and chunked.documents == plain.documents
    starts = list(chunked.chunk_starts) + [len(chunked.corpus)]
    assert len(chunked.corpus) > len(plain.corpus) and starts[0] == 0
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(len(chunked.queries), 8)).astype(np.float32)
    chunks = rng.normal(size=(len(chunked.corpus), 8)).astype(np.float32)
    top, scores = chunked.rank(queries, chunks)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    cos = unit(queries) @ unit(chunks).T
    reduce = np.max if agg == "max" else np.mean
    expected = np.stack([reduce(cos[:, a:b], axis=1) for a, b in zip(starts, starts[1:])], axis=1)
    assert np.allclose(scores, np.take_along_axis(expected, top, axis=1), atol=1e-5)
    assert np.array_equal(top[:, 0], expected.argmax(1))
    for text in chunked.corpus[: starts[1]]:  # the first document's chunks carry its title
        assert text.startswith(plain.documents[0][:20])


def test_document_view_without_title():
    plain = grid.Retrieval(_scifact(), max_docs=20, max_queries=2)
    bare = grid.Retrieval(_scifact(), max_docs=20, max_queries=2, title=False)
    assert len(bare.corpus) == len(plain.corpus)
    assert all(p.endswith(b[-30:]) and len(b) < len(p) for p, b in zip(plain.corpus, bare.corpus) if b)


def test_retrieval_ideas_refuse_grids_of_different_views(grid_run, tmp_path):
    from tp_rag_eval import retrieval_ideas

    other = tmp_path / "other"
    other.mkdir()
    record = json.loads((grid_run / "grid.json").read_text())
    record["settings"]["chunk_words"] = 50
    (other / "grid.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="chunk_words"):
        retrieval_ideas.main(["--grid", str(grid_run), str(other), "--data", str(DATA),
                              "--cache-dir", str(grid_run.parent / "layers"), "--out", str(tmp_path)])
    del record["settings"]["chunk_words"], record["settings"]["title"]  # an older grid: defaults
    (other / "grid.json").write_text(json.dumps(record))
    assert retrieval_ideas.Ideas([grid_run, other], DATA, grid_run.parent / "layers").records


def test_grid_without_vanilla_rows(grid_run, tmp_path):
    from tp_rag_eval import retrieval_ideas

    layers = grid_run.parent / "layers"
    grid.main(["--data", str(DATA), "--out", str(tmp_path), "--model", str(grid_run.parent / "tiny"),
               "--device", "cpu", "--max-docs", "60", "--max-queries", "8", "--sts-limit", "30",
               "--tp-exits", "3", "--no-vanilla", "--prompts", "prompteol", "--sts-prompts", "knowledge",
               "--max-length", "96", "--cache-dir", str(layers)])
    cells = json.loads((tmp_path / "grid.json").read_text())["results"]
    assert [c["settings"]["tp_exit"] for c in cells] == [3]
    assert set(json.loads((tmp_path / "runs.json").read_text())["results"]) == {"prompteol/tp"}
    retrieval_ideas.main(["--grid", str(tmp_path), "--data", str(DATA), "--cache-dir", str(layers),
                          "--out", str(tmp_path / "ideas")])
    rows = json.loads((tmp_path / "ideas" / "ideas.json").read_text())["results"]
    assert [r["idea"] for r in rows][:1] == ["prompteol/tp"]
