"""Plots and the token-routing HTML page from a run's jsonl files."""

from __future__ import annotations

import json

from dopd_vlm.reporting import plot_metrics, write_token_html


def test_plots_and_html(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s, "regime/HT/frac": 0.2, "regime/LH/frac": 0.8, "regime/HT/loss": 0.1,
             "regime/LH/loss": 0.05, "gap/mean": 0.3, "threshold/A": 0.25, "student/entropy": 2.0} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots")
    assert {p.name for p in written} == {"regime_fractions.png", "regime_losses.png", "gap.png", "entropy.png",
                                         "loss.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    sample = {"step": 1, "prompt": "How <many>?", "answer": "2", "tokens": ["2", "<|im_end|>"], "regimes": ["HT", "LH"]}
    (tmp_path / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    page = write_token_html(tmp_path / "samples.jsonl", tmp_path / "t.html").read_text()
    assert "&lt;|im_end|&gt;" in page and "How &lt;many&gt;?" in page  # escaped
    assert page.count('title="HT"') == 1 and page.count('title="LH"') == 1


def test_empty_inputs(tmp_path):
    assert plot_metrics(tmp_path / "missing.jsonl", tmp_path / "plots") == []
    assert "no samples" in write_token_html(tmp_path / "missing.jsonl", tmp_path / "t.html").read_text()
