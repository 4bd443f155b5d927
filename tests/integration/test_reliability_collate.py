"""Reliability of the model-facing boundary with real tiny processors: bad records reaching the
collator, prompts longer than the model's context, missing chat templates and teacher/student
tokenizer mismatches fail with an error naming the record / checkpoint and the field."""

from __future__ import annotations

import io
import random
import shutil

import pytest
from PIL import Image

from data_builders.records import make_record
from dopd_vlm.adapters import AdapterError, get_adapter
from dopd_vlm.collate import collate
from dopd_vlm.scoring import TokenizerMismatchError, check_tokenizer_compat

KW = dict(min_pixels=84 * 84, max_pixels=84 * 84)
RID = "ds/default/train/42"


@pytest.fixture(scope="module")
def student(tiny_ckpt):
    path = tiny_ckpt("qwen2_5_vl", seed=1, **KW)
    adapter = get_adapter(path)
    model, processor = adapter.load(path)
    return {"path": path, "adapter": adapter, "model": model, "processor": processor}


def image(fmt="PNG", size=(84, 84), truncate: float | None = None) -> Image.Image:
    rng = random.Random(0)
    im = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    data = buf.getvalue()
    if truncate is not None:
        data = data[: int(len(data) * truncate)]
    return Image.open(io.BytesIO(data))  # lazily decoded, as datasets hands images over


def record(**kw) -> dict:
    base = dict(id=RID, source={"dataset": "ds", "split": "train"}, images=[image()], image_size=(84, 84),
                question="What color is the circle?", answer="red",
                privileged={"regions": [{"bbox": [10.0, 10.0, 40.0, 40.0], "label": "red circle"}]})
    base.update(kw)
    return make_record(**base)


def _broken(mutate) -> dict:
    rec = record()
    mutate(rec)
    return rec


def _pop(key):
    return lambda r: r.pop(key)


def _set(key, value):
    return lambda r: r.__setitem__(key, value)


BAD_RECORDS = [
    ("images", _set("images", []), "0 images for 1"),
    ("images", _set("images", [image(), image()]), "2 images for 1"),
    ("prompt", _pop("prompt"), "non-empty list of messages"),
    ("prompt", _set("prompt", "What color?"), "non-empty list of messages"),
    ("prompt[0]", lambda r: r["prompt"][0].pop("role"), "needs 'role' and 'content'"),
    ("prompt[0].content", lambda r: r["prompt"][0].__setitem__("content", 7), "str or list of parts"),
    ("prompt", lambda r: r["prompt"].append({"role": "assistant", "content": "red"}), "last message must be the user"),
    ("privileged", lambda r: r["privileged"]["regions"][0].__setitem__("bbox", [1, 2]), ""),
]


@pytest.mark.parametrize("field, mutate, words", BAD_RECORDS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_RECORDS)])
def test_collate_refuses_bad_records_naming_record_and_field(student, field, mutate, words):
    rec = _broken(mutate)
    with pytest.raises(ValueError) as ei:
        collate([record(), rec], student["processor"], student["adapter"], ["regions"])
    msg = str(ei.value)
    assert f"record {RID!r}" in msg and f"field '{field}" in msg and words in msg, msg


def test_collate_without_image_size_falls_back_to_the_image(student):
    rec = record()
    rec["meta"].pop("image_size")
    batches = collate([rec], student["processor"], student["adapter"], ["regions"])
    assert batches["priv"].input_ids_B_T.shape[1] > batches["plain"].input_ids_B_T.shape[1]


def test_unknown_privileged_kind_is_refused(student):
    with pytest.raises(ValueError, match="unknown privileged kind 'regionz'"):
        collate([record()], student["processor"], student["adapter"], ["regionz"])


def test_empty_batch_is_refused(student):
    with pytest.raises(ValueError, match="collate got no records"):
        collate([], student["processor"], student["adapter"], ["regions"])


def test_truncated_image_in_a_dataset_names_the_record(student):
    rec = record(images=[image("JPEG", truncate=0.5)])
    with pytest.raises(ValueError) as ei:
        collate([rec], student["processor"], student["adapter"], [])
    assert RID in str(ei.value) and "images[0]" in str(ei.value)


def test_privileged_text_longer_than_the_context_names_the_record(student):
    rec = record(privileged={"captions": ["red circle " * 20000]})
    with pytest.raises(ValueError) as ei:
        collate([rec], student["processor"], student["adapter"], ["captions"], views=("priv",))
    msg = str(ei.value)
    assert RID in msg and "privileged" in msg and "context" in msg, msg


# ------------------------------------------------------------------------------- chat template
@pytest.fixture
def no_template_ckpt(student, tmp_path):
    dst = tmp_path / "no_template"
    shutil.copytree(student["path"], dst)
    (dst / "chat_template.jinja").unlink()
    return dst


def test_missing_chat_template_is_refused_at_load_naming_the_checkpoint(no_template_ckpt):
    with pytest.raises(AdapterError) as ei:
        get_adapter(str(no_template_ckpt)).load(str(no_template_ckpt))
    assert str(no_template_ckpt) in str(ei.value) and "chat template" in str(ei.value)


def test_missing_chat_template_is_a_value_error_not_a_crash(no_template_ckpt):
    adapter = get_adapter(str(no_template_ckpt))
    processor = adapter.load_processor(str(no_template_ckpt))
    with pytest.raises(ValueError, match="chat template"):
        collate([record()], processor, adapter, ["regions"])


# ------------------------------------------------------------------------ tokenizer mismatch
@pytest.fixture
def teacher(student, tmp_path):
    """A fresh copy of the student's processor to be altered (the teacher's)."""
    adapter = student["adapter"]
    return adapter, adapter.load_processor(student["path"])


def test_teacher_with_an_added_token_is_refused(student, teacher):
    t_adapter, t_proc = teacher
    t_proc.tokenizer.add_tokens(["<new_token>"])
    with pytest.raises(TokenizerMismatchError, match=r"tokenizers differ \(sizes \d+ vs \d+.*<new_token>"):
        check_tokenizer_compat(student["processor"], student["adapter"], t_proc, t_adapter)


def test_teacher_with_another_pad_token_is_refused(student, teacher):
    t_adapter, t_proc = teacher
    t_proc.tokenizer.pad_token = "<|im_end|>"
    with pytest.raises(TokenizerMismatchError, match="pad_token differ"):
        check_tokenizer_compat(student["processor"], student["adapter"], t_proc, t_adapter)


def test_teacher_without_chat_template_is_refused(student, teacher):
    t_adapter, t_proc = teacher
    t_proc.chat_template = None
    t_proc.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        check_tokenizer_compat(student["processor"], student["adapter"], t_proc, t_adapter)


def test_identical_processors_are_compatible(student, teacher):
    t_adapter, t_proc = teacher
    check_tokenizer_compat(student["processor"], student["adapter"], t_proc, t_adapter)
