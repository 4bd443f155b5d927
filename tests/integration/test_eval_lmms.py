"""lmms-eval end to end on tiny checkpoints, offline: the `dopd_vlm` model through the real
`lmms-eval` CLI, the task folders `dopd-vlm eval make-task` writes, and the shipped synthetic task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "eval" / "tasks"
WRONG = "zzzwrong"  # an answer no tiny model produces


def _mini_dataset(out: Path, answers: list[str] | None = None, n: int = 4) -> Path:
    """A save_to_disk DatasetDict of ``n`` one-image records whose privileged fields hold SECRET text."""
    import datasets
    from PIL import Image, ImageDraw

    from data_builders.records import make_record, record_features, resolve_image

    colours = {"red": (220, 40, 40), "blue": (40, 90, 230), "green": (40, 170, 60)}
    records = []
    for i in range(n):
        name = list(colours)[i % 3]
        im = Image.new("RGB", (56, 56), (128, 128, 128))
        ImageDraw.Draw(im).ellipse((8 + i, 8, 40 + i, 40), fill=colours[name])
        img, size = resolve_image(im)
        rec = make_record(id=f"mini/test/{i}", source={"dataset": "mini", "split": "test"}, images=[img],
                          image_size=size, question=f"What color is circle {i}?",
                          answer=answers[i] if answers else name,
                          privileged={"captions": [f"SECRET caption {name}"], "answer": f"SECRET {name}"},
                          meta={"question_family": ("query", "count")[i % 2]})
        rec["privileged_context"] = f"SECRET privileged context: a {name} circle"
        records.append(rec)
    ds = datasets.Dataset.from_list(records, features=record_features())
    datasets.DatasetDict({"test": ds}).save_to_disk(str(out))
    return out


def _greedy_answers(ckpt: str, dataset_dir: Path, max_new_tokens: int) -> list[str]:
    """Each record's greedy answer, computed with plain transformers (not the adapter)."""
    import datasets
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(ckpt)
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
    outs = []
    for rec in datasets.load_from_disk(str(dataset_dir))["test"]:
        images = iter(rec["images"])
        content = [{"type": "image", "image": next(images).convert("RGB")} if p["type"] == "image"
                   else {"type": "text", "text": p["text"]} for p in rec["prompt"][0]["content"]]
        enc = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        outs.append(proc.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)[0])
    return outs


def _lmms_eval(ckpt: str, task: str, include_path: Path, out: Path, limit: int | None = None) -> tuple[dict, list]:
    """Run the `lmms-eval` CLI as users do; return (results JSON, logged samples)."""
    cmd = [str(Path(sys.executable).parent / "lmms-eval"), "--model", "dopd_vlm",
           "--model_args", f"pretrained={ckpt}", "--tasks", task, "--include_path", str(include_path),
           "--batch_size", "1", "--output_path", str(out), "--log_samples"]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(out.rglob("*_results.json"))
    # lmms-eval exits 0 after a crash: the results JSON is the proof the evaluation ran
    assert len(found) == 1, f"no results JSON; lmms-eval output:\n{proc.stderr[-3000:]}"
    samples = [json.loads(line) for p in out.rglob(f"*_samples_{task}.jsonl") for line in p.read_text().splitlines()]
    return json.loads(found[0].read_text()), samples


def test_entry_point_registers_the_chat_model():
    from lmms_eval.models import get_model, get_model_manifest

    from dopd_vlm.lmms_model import DopdVLM

    assert get_model("dopd_vlm") is DopdVLM
    assert DopdVLM.is_simple is False
    assert get_model_manifest("dopd_vlm").chat_class_path == "dopd_vlm.lmms_model.DopdVLM"


def test_entry_point_registers_when_our_module_is_imported_first():
    """Importing dopd_vlm.lmms_model first makes lmms-eval load the entry point while the module
    is half-initialised; the registration must still succeed (no 'Failed to load' warning)."""
    code = ("import dopd_vlm.lmms_model\n"
            "from lmms_eval.models import get_model\n"
            "assert get_model('dopd_vlm') is dopd_vlm.lmms_model.DopdVLM\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Failed to load model entry-point" not in proc.stderr


def test_make_task_writes_the_student_view_only(tmp_path):
    import pyarrow.parquet as pq

    from dopd_vlm.evaluate import make_task

    ds = _mini_dataset(tmp_path / "ds")
    task_dir = make_task(ds, "mini_task", out=tmp_path / "tasks" / "mini_task")
    assert sorted(p.name for p in task_dir.iterdir()) == ["mini_task.yaml", "task_info.json", "test.parquet", "utils.py"]
    table = pq.read_table(task_dir / "test.parquet")
    assert sorted(table.column_names) == sorted(["id", "images", "prompt", "question", "choices", "target",
                                                 "metric", "rel_tol", "family"])
    # no value anywhere in the written data or config carries the privileged text
    assert "SECRET" not in json.dumps(table.drop(["images"]).to_pylist())
    assert "SECRET" not in (task_dir / "mini_task.yaml").read_text() + (task_dir / "task_info.json").read_text()
    yaml_text = (task_dir / "mini_task.yaml").read_text()
    assert "metric: accuracy_query" in yaml_text and "metric: accuracy_count" in yaml_text
    info = json.loads((task_dir / "task_info.json").read_text())
    assert info["n"] == 4 and info["metrics"] == {"exact": 4} and info["families"] == {"count": 2, "query": 2}


def test_lmms_eval_cli_scores_the_models_own_answers(tmp_path, tiny_ckpt):
    """Acceptance: `lmms-eval --model dopd_vlm ... --include_path` on a tiny checkpoint gives a real
    score: records whose answer is the model's own greedy output (computed independently with plain
    transformers) score 1, the record with a wrong answer scores 0, so accuracy is exactly 3/4."""
    from dopd_vlm.evaluate import make_task

    ckpt = tiny_ckpt("qwen3_vl")
    probe = _mini_dataset(tmp_path / "probe")
    answers = _greedy_answers(ckpt, probe, max_new_tokens=4)
    assert all(a.strip() for a in answers), answers
    answers[1] = WRONG
    ds = _mini_dataset(tmp_path / "ds", answers=answers)
    make_task(ds, "own_answers", out=tmp_path / "tasks" / "own_answers", metric="exact", max_new_tokens=4)

    results, samples = _lmms_eval(ckpt, "own_answers", tmp_path / "tasks", tmp_path / "out")
    metrics = results["results"]["own_answers"]
    assert metrics["accuracy,none"] == pytest.approx(0.75)
    assert metrics["accuracy_query,none"] == pytest.approx(1.0)  # docs 0 and 2
    assert metrics["accuracy_count,none"] == pytest.approx(0.5)  # docs 1 (the wrong answer) and 3
    assert results["n-samples"]["own_answers"]["effective"] == 4
    assert [s["filtered_resps"] for s in sorted(samples, key=lambda s: s["doc_id"])][0] == answers[0]


def test_lmms_eval_cli_on_the_shipped_synthetic_task(tmp_path, tiny_ckpt):
    """The synthetic-scenes task shipped in eval/tasks runs offline; its aggregate equals the mean of
    the per-sample scores recomputed from the logged predictions."""
    from dopd_vlm import lmms_task_utils as U

    results, samples = _lmms_eval(tiny_ckpt("qwen2_5_vl"), "synthetic_scenes", TASKS, tmp_path / "out", limit=6)
    metrics = results["results"]["synthetic_scenes"]
    assert len(samples) == 6
    acc = metrics["accuracy,none"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert acc == pytest.approx(sum(s["accuracy"] for s in samples) / 6)
    import datasets

    docs = datasets.load_dataset("parquet", data_files={"test": str(TASKS / "synthetic_scenes" / "test.parquet")})["test"]
    for s in samples:
        doc = docs[s["doc_id"]]
        assert s["accuracy"] == U.score(s["filtered_resps"], doc["target"], doc["metric"], doc["choices"], doc["rel_tol"])
        assert U.family_metric_name(doc["family"]) + ",none" in metrics


def test_generation_settings_and_message_conversion():
    from PIL import Image

    from dopd_vlm.lmms_model import _truncate_at_stops, generation_settings, split_media

    gen, until = generation_settings({"max_new_tokens": 64, "temperature": 0, "until": ["\n\n"]}, cap=16)
    assert gen == {"max_new_tokens": 16, "do_sample": False, "num_beams": 1} and until == ["\n\n"]
    # the model arg replaces the task's budget both ways: a short task can be given room to reason
    gen, _ = generation_settings({"max_new_tokens": 16}, cap=2048)
    assert gen["max_new_tokens"] == 2048
    gen, _ = generation_settings({"temperature": 0.7, "top_p": 0.9}, cap=None)
    assert gen["do_sample"] and gen["temperature"] == 0.7 and gen["top_p"] == 0.9 and gen["max_new_tokens"] == 128
    assert _truncate_at_stops("red\n\nblue</s>", ["</s>", "\n\n"]) == "red"
    im = Image.new("L", (4, 4))
    msgs, images = split_media([{"role": "user", "content": [{"type": "image", "image": im},
                                                             {"type": "text", "text": "q"}]}])
    assert msgs == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]
    assert images[0].mode == "RGB"
    with pytest.raises(ValueError, match="'video' is not supported"):
        split_media([{"role": "user", "content": [{"type": "video", "video": "x.mp4"}]}])
