"""The annotate reply cache (issue 13, point 5): keyed by the exact request, survives a cut last line,
one run at a time; templates ship with the package and fill only their placeholders."""

from __future__ import annotations

import json

import pytest

from data_builders.annotate import KINDS, AnnotateError, ReplyCache, fill, request_key, template_text

MSGS = [{"role": "user", "content": [{"type": "image", "image": b"\x89PNG fake bytes"}, {"type": "text", "text": "Q?"}]}]
DESC = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"}
PARAMS = {"max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": 0}


def test_request_key_changes_with_anything_that_changes_the_reply():
    k = request_key(DESC, MSGS, PARAMS)
    assert k == request_key(dict(DESC), [dict(m) for m in MSGS], dict(PARAMS))
    other_image = [{"role": "user", "content": [{"type": "image", "image": b"other"}, MSGS[0]["content"][1]]}]
    for changed in (request_key({**DESC, "model": "m2"}, MSGS, PARAMS), request_key(DESC, other_image, PARAMS),
                    request_key(DESC, MSGS, {**PARAMS, "temperature": 0.7})):
        assert changed != k


def test_cache_survives_a_cut_last_line_and_refuses_a_second_run(tmp_path):
    c = ReplyCache(tmp_path / "c")
    c.put({"key": "a", "text": "red"})
    c.put({"key": "b", "text": "blue"})
    with pytest.raises(AnnotateError, match="another annotate run"):
        ReplyCache(tmp_path / "c")
    c.close()
    with open(tmp_path / "c" / "responses.jsonl", "a") as f:
        f.write(json.dumps({"key": "c", "text": "green"})[:20])  # a run killed mid-write
    c2 = ReplyCache(tmp_path / "c")
    assert c2.get("a")["text"] == "red" and c2.get("b")["text"] == "blue" and c2.get("c") is None
    c2.put({"key": "d", "text": "after the cut"})
    c2.close()
    c3 = ReplyCache(tmp_path / "c")
    assert c3.get("d")["text"] == "after the cut" and len(c3.entries) == 3
    c3.close()


def test_every_kind_ships_a_template_with_its_placeholders(tmp_path):
    for name in [*KINDS, "recheck"]:
        text, where = template_text(name)
        assert "{question}" in text and where.endswith(f"templates/annotate/{name}.txt")
    filled = fill(template_text("recheck")[0], {"question": "How many?", "options": "", "answer": "3",
                                                "privileged": "Objects: cube [1, 2, 3, 4]."})
    assert "How many?" in filled and '{"correct": true or false' in filled and "{question}" not in filled
    own = tmp_path / "mine.txt"
    own.write_text("Boxes for: {question}")
    assert template_text(str(own)) == ("Boxes for: {question}", str(own))
    with pytest.raises(AnnotateError, match="no such file"):
        template_text(str(tmp_path / "missing.txt"))
