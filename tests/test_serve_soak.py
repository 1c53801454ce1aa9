"""A short version of the committed soak (``python -m tp_rag_eval.serve_bench soak``): a real
server process on 127.0.0.1 with a tiny model, past its queue limit, with malformed and
disconnecting clients. Only the intended 503s may be 5xx; malformed requests get 400."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("httpx")

from tp_rag_eval import serve_bench  # noqa: E402


@pytest.mark.slow
def test_short_soak_has_no_unexpected_5xx(tmp_path):
    serve_bench.main(["soak", "--tiny", "--concurrency", "1", "48", "--requests-per-level", "60",
                      "--seconds-per-level", "40", "--max-queue", "16", "--mix", "3", "3", "2",
                      "1", "1", "--out", str(tmp_path), "--name", "short"])
    record = json.loads((tmp_path / "short.json").read_text())
    assert (tmp_path / "short.md").read_text().startswith("# tp-rag serve: soak past capacity")
    summary, rows = record["summary"], record["results"]
    assert summary["unexpected_5xx"] == 0 and summary["malformed_all_400"]
    assert [r["concurrency"] for r in rows] == [1, 48]
    assert all(r["ok"] > 0 for r in rows)
    assert rows[0]["statuses"].get("503", 0) == 0  # one client never fills the queue
    assert rows[1]["statuses"].get("503", 0) > 0  # 48 clients with a 16-text queue do
    assert summary["queued_after_each_level"] == [0, 0]  # nothing left behind
    assert summary["peak_rss_mb"] is None or summary["peak_rss_mb"] > 0
