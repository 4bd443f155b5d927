"""Regression tests for bugs found in the review of issues 13, 16, 17 and 18 (one test per bug)."""

import pytest

from dopd_vlm import config as c


@pytest.mark.parametrize("word", ["no", "off", "No", "yes"])
def test_chat_template_kwargs_refuses_yes_no_text(tmp_path, word):
    # The project's YAML keeps yes/no/on/off as text; Qwen3's template tests `enable_thinking is
    # false`, so {enable_thinking: no} used to train (and evaluate) in thinking mode without a word.
    with pytest.raises(c.ConfigError, match="enable_thinking"):
        c.load_config(c.TrainConfig, None, [f"model.chat_template_kwargs={{enable_thinking: {word}}}"])
    p = tmp_path / "cfg.yaml"
    p.write_text(f"model:\n  chat_template_kwargs:\n    enable_thinking: {word}\n")
    with pytest.raises(c.ConfigError, match="enable_thinking"):
        c.load_config(c.SFTConfig, p)
    ok = c.load_config(c.TrainConfig, None, ["model.chat_template_kwargs={enable_thinking: false}"])
    assert ok.model.chat_template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize("reply,expected", [
    ("The answer is (c).", "C"), ("\\boxed{c}", "C"), ("Answer: b", "B"), ("**Answer:** (b) blue", "B"),
    ("Final answer: c) green", "C"),
    ("The answer is a red circle", None),  # an article, not option A
    ("b", None),  # a bare lower-case reply stays a word (tests/unit/test_eval_scoring.py)
    ("Answer: d", None),  # out of range
])
def test_stated_lower_case_option_letter_is_scored(reply, expected):
    # A reply that states its answer as "(c)" or \boxed{c} named option C but scored 0.
    from dopd_vlm import lmms_task_utils as U

    assert U.extract_choice(reply, ["red", "blue", "green"]) == expected


@pytest.mark.parametrize("reply,passes", [
    ('{"correct": true, "reveals_answer": "yes", "reason": "names the colour"}', False),
    ('{"correct": true, "reveals_answer": "true"}', False),
    ('{"correct": "yes", "reveals_answer": "no"}', True),
    ('{"correct": "false", "reveals_answer": false}', False),
    ('{"correct": true, "reveals_answer": false}', True),
    ('{"correct": true}', True),
])
def test_recheck_verdict_reads_text_booleans(reply, passes):
    # A verdict with "reveals_answer": "yes" (a string) used to pass the recheck as not revealing.
    from data_builders.annotate import parse_verdict

    assert parse_verdict(reply)[0] is passes


def test_recheck_verdict_with_unreadable_reveals_is_unparsable():
    from data_builders.annotate import parse_verdict

    with pytest.raises(ValueError, match="reveals_answer"):
        parse_verdict('{"correct": true, "reveals_answer": "maybe"}')


def test_whitespace_only_privileged_fields_render_nothing_and_count_as_empty():
    # {"solution": " "} rendered "Solution:  " (a bare header): the empty-privilege check counted the
    # row as carrying privilege and training went ahead with a teacher view that says nothing.
    from dopd_vlm.privilege_check import EmptyPrivilegeError, check_training_data
    from dopd_vlm.privileged import render_privileged

    assert render_privileged({"solution": " ", "hints": ["", "  "], "captions": [""]},
                             ["solution", "hints", "captions"]) == ""
    assert render_privileged({"hints": ["", "add 2 and 3"]}, ["hints"]) == "Hints: add 2 and 3"
    rows = [{"privileged": {"solution": " \n"}, "meta": {}}, {"privileged": {"solution": ""}, "meta": {}}]
    with pytest.raises(EmptyPrivilegeError, match="empty in 2 of 2 rows"):
        check_training_data(rows, ["solution"], ["student_plain", "teacher_priv"], warn=lambda m: None)


def test_hints_without_execution_keep_symbolic_results_whole_and_drop_the_restated_conclusion():
    # "= 16\pi" lost its 16 and left "\pi \cdot 4^2\pi" (wrong mathematics written into the hints), and
    # the last step "The answer is $\boxed{6}$" became "The answer is $\boxed{(2 \cdot 3)}$".
    from data_builders.textmath import hints_without_execution
    from dopd_vlm.privileged import split_steps

    area = hints_without_execution(["The area is $\\pi r^2 = \\pi \\cdot 4^2 = 16\\pi$.", "Halve it."],
                                   "Half the area of a circle of radius 4?", "8\\pi")
    assert area[0] == "The area is $\\pi r^2 = \\pi \\cdot 4^2 = 16\\pi$."
    sol = "If $x+2=5$, then $x=3$. So $2x = 2 \\cdot 3 = 6$. The answer is $\\boxed{6}$."
    hints = hints_without_execution(split_steps(sol), "Solve x+2=5 and find 2x.", "6")
    assert hints == ["If $x+2=5$, then $x=3$.", "So $2x = 2 \\cdot 3$."]
    # bare results followed by a unit still lose their result
    assert hints_without_execution(["We get 3 + 4 = 7\\text{ cm} and 2 * 5 = 10 m."], "q", "99") == \
        ["We get 3 + 4\\text{ cm} and 2 * 5 m."]


def test_family_columns_do_not_claim_the_task_document_count(tmp_path):
    # The header read "sc_t/accuracy_count (n=4 of 16)" although only the count rows among those 4 were scored.
    from dopd_vlm import evaluate as E

    r = E.RunResult("ck", "ck", {"t": {"accuracy": 0.5, "accuracy_count": 1.0}}, None, tmp_path)
    r.counts, r.totals = {"t": 4}, {"t": 16}
    md = E.write_comparison([r], [("t", "accuracy"), ("t", "accuracy_count")], tmp_path, limit=4)["md"].read_text()
    assert "t/accuracy (n=4 of 16)" in md and "t/accuracy_count (one family within n=4 of 16)" in md


def test_annotate_box_kinds_need_an_explicit_coordinate_convention(tmp_path, capsys):
    """A default guess (qwen2_5_vl pixels) would read a Qwen3-VL annotator's 0-1000 boxes as pixels."""
    from dopd_vlm.cli import main

    argv = ["annotate", str(tmp_path / "ds"), "--out", str(tmp_path / "out"), "--model", "m",
            "--base-url", "http://127.0.0.1:9/v1"]
    assert main(argv + ["--kind", "boxes_labels"]) == 2
    err = capsys.readouterr().err
    assert "--kind boxes_labels needs --coords" in err and "qwen3_vl" in err
    assert not (tmp_path / "out").exists()
