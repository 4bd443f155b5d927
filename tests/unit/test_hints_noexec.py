"""Step-wise hints without execution (issue 13, point 8; DOPD Table 4): no computed result survives."""

from __future__ import annotations

import re

from data_builders.textmath import hints_without_execution
from dopd_vlm.privileged import contains_answer, hints_from_trace, render_privileged, split_steps

GSM8K = [
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips "
     "did Natalia sell altogether in April and May?",
     "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in "
     "April and May.", "72"),
    ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
     "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.",
     "10"),
    ("Betty needs $100 for a wallet. She has half of the money. Her parents give her $15 and her grandparents twice "
     "as much as her parents. How much more money does Betty need?",
     "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\nBetty's grandparents gave her 15 * 2 = "
     "$<<15*2=30>>30.\nThis means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.", "5"),
]


def _results(solution: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"<<[^=]*=([^>]*)>>", solution)}


def test_gsm8k_hints_state_what_to_compute_never_the_result():
    for question, solution, answer in GSM8K:
        hints = hints_without_execution(split_steps(solution), question, answer)
        assert len(hints) == len(split_steps(solution))  # one hint per step, the last one included
        given = set(re.findall(r"\d+(?:\.\d+)?", question))
        for h in hints:
            nums = set(re.findall(r"\d+(?:\.\d+)?", h))
            assert not (nums & (_results(solution) - given)), (h, solution)  # no computed result
            assert "<<" not in h and not contains_answer(h, answer)
    hints = hints_without_execution(split_steps(GSM8K[0][1]), GSM8K[0][0], "72")
    assert hints == ["Natalia sold 48/2 clips in May.", "Natalia sold 48+(48/2) clips altogether in April and May."]
    # the with-execution variant keeps the results (and drops the concluding step)
    assert hints_from_trace(split_steps(GSM8K[0][1]), "72") == ["Natalia sold 48/2 = 24 clips in May."]


def test_unannotated_equations_lose_their_results():
    steps = ["We have 3 * 4 = 12 apples.", "Then 12 + 5 = 17 in total."]
    assert hints_without_execution(steps, "3 boxes of 4 apples and 5 more", "17") == \
        ["We have 3 * 4 apples.", "Then (3 * 4) + 5 in total."]
    # numbers the question gives are not results, and plain prose is left alone
    assert hints_without_execution(["Divide both sides by 2."], "2x = 8", "4") == ["Divide both sides by 2."]


def test_hints_render_one_step_per_line():
    text = render_privileged({"hints": ["Find 48/2.", "Add it to 48."]}, ["hints"])
    assert text == "Hints: Find 48/2.\nAdd it to 48."
    assert render_privileged({"hints_exec": ["48/2 = 24."]}, ["hints_exec"]) == "Hints: 48/2 = 24."
