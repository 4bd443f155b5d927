"""Write privileged information into a built dataset with a model: `dopd-vlm annotate DATASET --out DIR --kind KIND`.

The DOPD paper's privileged inputs were written by a strong model and rechecked by a model, low-quality
rows dropped (Sec. 5, Tables 4-5). This command does that for any dataset `dopd-vlm build` wrote:

  1. ask the annotator model, per record, for one kind of privileged information (one editable prompt
     template per kind, shipped in data_builders/templates/annotate/, or your own with --template);
  2. parse the reply: boxes from Qwen-VL grounding JSON or [x1, y1, x2, y2] lists, converted from the
     annotator's coordinate convention (--coords) to the record's canonical absolute boxes of the
     original image, clipped and validated; hints one step per line. An unusable reply is retried once
     (the model is told what was wrong), then the row is a counted skip with its reason;
  3. recheck (--recheck, the paper's filter): a second prompt asks whether each item is correct for the
     image and question and free of the final answer; rows are kept, flagged or dropped by policy; the
     answer-leak guard runs as well (--leak-policy);
  4. write a new dataset folder in the same record format, atomically (like `build`), with
     build_summary.json (counts, reasons, recheck verdicts, empty contexts per kind, requests, tokens).

Kinds (the paper's Tables 4-5):
  boxes_labels    boxes with object labels (the paper's best VLM privilege)  -> privileged.regions
  boxes_captions  boxes with region captions                                  -> privileged.regions
  captions        an image caption                                            -> privileged.captions
  hints           step-wise hints without execution (the best LLM privilege)  -> privileged.hints
  hints_exec      step-wise hints with execution                              -> privileged.hints_exec
  hints_summary   summarized hints                                            -> privileged.hints_summary
  answer          the final answer only (the explicit ablation)               -> privileged.answer

Backends: --backend openai (default) talks to any OpenAI-compatible chat-completions endpoint
(--base-url, e.g. a vLLM or SGLang server; the key comes from the environment variable named by
--api-key-env), images as base64 data URLs, --concurrency requests in flight, --timeout and retries
with backoff; --backend local runs a local checkpoint offline (vLLM's LLM if installed, else
transformers generate).

Lossless and resumable: every reply is stored as it arrives in DIR.annotate-cache/responses.jsonl
(beside the output), keyed by a hash of the exact request; a killed run, rerun with the same command,
sends only the requests that have no stored reply. Each record's meta.annotate.<kind> names the
model, the template (and its sha256), the parameters and the recheck verdict.

Examples:
  vllm serve Qwen/Qwen2.5-VL-72B-Instruct --port 8000 &
  dopd-vlm annotate data/virl39k --out data/virl39k_boxes --kind boxes_labels \\
      --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-VL-72B-Instruct --coords qwen2_5_vl
  dopd-vlm annotate data/math --out data/math_hints --kind hints --base-url http://127.0.0.1:8000/v1 \\
      --model Qwen/Qwen3-32B --recheck drop
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dopd_vlm.privileged import contains_answer, privileged_text_for_leak_check, render_privileged

from .boxparse import (
    CONVENTIONS,
    QWEN2_5_VL_MAX_PIXELS,
    QWEN2_5_VL_MIN_PIXELS,
    BoxParseError,
    canonical_regions,
)
from .records import format_choices


class AnnotateError(ValueError):
    """A bad annotate setting or input (the message names it)."""


@dataclass(frozen=True)
class Kind:
    name: str
    field: str  # the privileged field written
    render: str  # the renderer kind (dopd_vlm.privileged.KINDS)
    parser: str  # boxes | steps | text
    needs_image: bool = False
    doc: str = ""


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("boxes_labels", "regions", "regions", "boxes", True, "boxes with object labels [P Table 5: best VLM privilege]"),
    Kind("boxes_captions", "regions", "regions", "boxes", True, "boxes with region captions [P Table 5]"),
    Kind("captions", "captions", "captions", "text", True, "an image caption [P Table 5]"),
    Kind("hints", "hints", "hints", "steps", False, "step-wise hints without execution [P Table 4: best LLM privilege]"),
    Kind("hints_exec", "hints_exec", "hints_exec", "steps", False, "step-wise hints with execution [P Table 4]"),
    Kind("hints_summary", "hints_summary", "hints_summary", "text", False, "summarized hints [P Table 4]"),
    Kind("answer", "answer", "answer", "text", False, "the final answer only: the ablation [P Tables 4-5: worst]"),
)}
KIND_ALIASES = {"regions": "boxes_labels", "boxes": "boxes_labels", "caption": "captions"}
RECHECK_POLICIES = ("drop", "flag", "keep", "off")
CHUNK = 64  # records per round of requests (replies are stored one by one as they arrive) [D]


def kind_of(name: str) -> Kind:
    k = KIND_ALIASES.get(name, name)
    if k not in KINDS:
        raise AnnotateError(f"unknown --kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[k]


def template_text(name_or_path: str) -> tuple[str, str]:
    """(template text, its name): a shipped template name (a kind, or ``recheck``) or a file path."""
    p = Path(name_or_path)
    if p.suffix == ".txt" or p.exists():
        if not p.is_file():
            raise AnnotateError(f"--template {p}: no such file")
        return p.read_text(encoding="utf-8"), str(p)
    try:
        text = resources.files("data_builders").joinpath("templates", "annotate", f"{name_or_path}.txt").read_text("utf-8")
    except FileNotFoundError:
        raise AnnotateError(f"no shipped template {name_or_path!r}") from None
    return text, f"data_builders/templates/annotate/{name_or_path}.txt"


def fill(template: str, values: dict) -> str:
    """Replace the known ``{placeholders}`` only (JSON braces in a template stay as they are)."""
    out = template
    for k, v in values.items():
        out = out.replace("{" + k + "}", v)
    return re.sub(r"\n{3,}", "\n\n", out).strip()


# ------------------------------------------------------------------------------------- cache
class ReplyCache:
    """Append-only JSON lines of replies, keyed by a hash of the exact request; fsync'd per reply."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "responses.jsonl"
        self._lock = open(folder / "lock", "w")
        try:
            import fcntl

            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AnnotateError(f"another annotate run is using {folder}") from None
        except ImportError:  # not POSIX: no lock
            pass
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue  # the last line of a killed run may be cut
                    self.entries[e["key"]] = e
        self._fh = open(self.path, "a", encoding="utf-8")
        if self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            self._fh.write("\n")  # end the line a killed run cut, so the next reply starts a line of its own

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, entry: dict) -> None:
        self.entries[entry["key"]] = entry
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()
        self._lock.close()


def request_key(backend_desc: dict, messages: list[dict], params: dict) -> str:
    h = hashlib.sha256(json.dumps({"backend": backend_desc, "params": params}, sort_keys=True).encode())
    for m in messages:
        h.update(m["role"].encode())
        for p in m["content"] if not isinstance(m["content"], str) else [{"type": "text", "text": m["content"]}]:
            h.update(b"\x00" + (hashlib.sha256(p["image"]).digest() if p["type"] == "image" else p["text"].encode()))
    return h.hexdigest()


# ----------------------------------------------------------------------------------- parsing
_STEP_PREFIX = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.):]|step\s*\d+\s*[.:)-]?|hint\s*\d*\s*[.:)-])\s*", re.IGNORECASE)
_COMPUTED = re.compile(r"=\s*\$?-?\d")  # "48/2 = 24": an executed result


def _strip_fences(text: str) -> str:
    t = text.strip()
    m = re.fullmatch(r"```[a-zA-Z]*\s*(.*?)\s*```", t, re.DOTALL)
    return m.group(1).strip() if m else t


def parse_reply(kind: Kind, text: str | None, finish_reason: str | None, image_size, convention: str,
                min_pixels: int, max_pixels: int):
    """A reply -> the privileged field's value; ``BoxParseError`` (a ValueError) with the reason otherwise."""
    if text is None or not text.strip():
        raise BoxParseError("empty reply")
    if kind.parser == "boxes":
        if image_size is None:
            raise BoxParseError("no image size (boxes refer to images[0])")
        return canonical_regions(text, convention, image_size, min_pixels, max_pixels, need_labels=True)
    if finish_reason == "length":
        raise BoxParseError("reply cut at --max-tokens")
    body = _strip_fences(text)
    if kind.parser == "steps":
        steps = [_STEP_PREFIX.sub("", ln).strip() for ln in body.splitlines()]
        steps = [s for s in steps if s and not s.lower().startswith(("hints", "here are"))]
        if not steps:
            raise BoxParseError("no steps found (one hint per line)")
        if kind.name == "hints":
            bad = [s for s in steps if _COMPUTED.search(s)]
            if bad:
                raise BoxParseError(f"a hint states a computed result (hints are without execution): {bad[0][:80]!r}")
        return steps
    one = " ".join(body.split())
    if kind.field == "answer":
        return one
    return [one]


def _verdict_bool(v) -> bool | None:
    """A verdict field: JSON true/false, or the words true/false/yes/no; None for anything else."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return {"true": True, "yes": True, "false": False, "no": False}.get(v.strip().lower())
    return None


def parse_verdict(text: str | None) -> tuple[bool, str]:
    """A recheck reply -> (passes: correct and free of the answer, reason)."""
    if not text or not text.strip():
        raise ValueError("empty recheck reply")
    body = _strip_fences(text)
    obj = None
    for m in re.finditer(r"\{.*?\}", body, re.DOTALL):
        try:
            obj = json.loads(m.group())
            break
        except ValueError:
            continue
    correct = _verdict_bool(obj.get("correct")) if isinstance(obj, dict) else None
    if correct is not None:
        # "reveals_answer": "yes" (text, not JSON true) used to pass as not revealing
        reveals = _verdict_bool(obj.get("reveals_answer", obj.get("leaks_answer", False)))
        if reveals is None:
            raise ValueError(f"recheck verdict: reveals_answer is neither true nor false: {body[:120]!r}")
        reason = str(obj.get("reason") or "")[:200]
        if not correct:
            return False, "incorrect" + (f": {reason}" if reason else "")
        if reveals is True:
            return False, "reveals the answer" + (f": {reason}" if reason else "")
        return True, reason
    m = re.match(r"\s*(yes|no|correct|incorrect)\b", body, re.IGNORECASE)
    if m:
        ok = m.group(1).lower() in ("yes", "correct")
        return ok, "" if ok else "incorrect: " + body[:200]
    raise ValueError("recheck reply is neither the JSON verdict nor yes/no")


# ----------------------------------------------------------------------------------- summary
@dataclass
class AnnotateSummary:
    split: str
    kind: str
    rows_in: int = 0
    kept: int = 0
    skipped: list[dict] = field(default_factory=list)  # {id, category, reason}
    retried: int = 0
    recheck: dict = field(default_factory=dict)
    leak: dict = field(default_factory=dict)
    privileged_empty: dict | None = None
    requests_sent: int = 0
    replies_cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        reasons: dict[str, int] = {}
        for s in self.skipped:
            reasons[s["category"]] = reasons.get(s["category"], 0) + 1
        return {"split": self.split, "kind": self.kind, "rows_in": self.rows_in, "kept": self.kept,
                "skipped": len(self.skipped), "skip_reasons": reasons, "skipped_rows": self.skipped[:1000],
                "retried": self.retried, "recheck": self.recheck, "leak": self.leak,
                "privileged_empty": self.privileged_empty,
                "requests": {"sent": self.requests_sent, "from_cache": self.replies_cached},
                "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens}}

    def text(self) -> str:
        from dopd_vlm.privilege_check import describe_counts

        d = self.as_dict()
        lines = [f"[{self.split}] {self.kind}: rows {self.rows_in}: kept {self.kept}, skipped {d['skipped']}"
                 + (f" ({', '.join(f'{k} {v}' for k, v in d['skip_reasons'].items())})" if d["skip_reasons"] else "")
                 + f"; retried {self.retried}"]
        if self.recheck:
            r = self.recheck
            lines.append(f"[{self.split}] recheck ({r['policy']}): {r['checked']} checked, {r['passed']} passed, "
                         f"{r['failed']} failed, {r['unparsable']} unparsable; dropped {r['dropped']}, "
                         f"flagged {r['flagged']}")
        if self.leak:
            lines.append(f"[{self.split}] privileged text states the answer in {self.leak['leaked']} of "
                         f"{self.leak['checked']} rows (policy {self.leak['policy']}, dropped {self.leak['dropped']})")
        if self.privileged_empty is not None:
            lines.append(describe_counts(self.privileged_empty, f"[{self.split}] "))
        lines.append(f"[{self.split}] requests sent {self.requests_sent}, replies from the cache {self.replies_cached}; "
                     f"tokens spent: prompt {self.prompt_tokens}, completion {self.completion_tokens}")
        for s in self.skipped[:10]:
            lines.append(f"  skipped {s['id']}: {s['reason']}")
        if len(self.skipped) > 10:
            lines.append(f"  ... {len(self.skipped) - 10} more in build_summary.json")
        return "\n".join(lines)


def _category(reason: str) -> str:
    r = reason.lower()
    for key, cat in (("request failed", "request failed"), ("no box found", "no box found"),
                     ("has no label", "box without label"), ("box ", "invalid box"), ("empty reply", "empty reply"),
                     ("cut at", "cut at max_tokens"), ("computed result", "hint states a computed result"),
                     ("no steps", "no steps"), ("no image", "no image"), ("recheck", "recheck"),
                     ("states the final answer", "answer leak"), ("boxes (more than", "too many boxes")):
        if key in r:
            return cat
    return "other"


# ------------------------------------------------------------------------------------ running
@dataclass
class Settings:
    kind: Kind
    template: str
    template_name: str
    recheck: str = "drop"
    recheck_template: str = ""
    recheck_template_name: str = ""
    convention: str = "qwen2_5_vl"
    min_pixels: int = QWEN2_5_VL_MIN_PIXELS
    max_pixels: int = QWEN2_5_VL_MAX_PIXELS
    max_tokens: int = 1024
    recheck_max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    leak_policy: str = "drop"
    render_kinds: list[str] | None = None
    quiet: bool = False


def _values(rec: dict) -> dict:
    return {"question": rec["question"] or "", "options": format_choices(rec["choices"]) if rec.get("choices") else "",
            "answer": str(rec["answer"]) if rec.get("answer") is not None else "(not given)"}


def _image_parts(rec: dict, kind: Kind) -> list[dict]:
    ims = [im for im in rec.get("images") or [] if im is not None]
    if kind.parser == "boxes":
        ims = ims[:1]  # boxes refer to images[0]
    out = []
    for im in ims:
        data = im.get("bytes") if isinstance(im, dict) else None
        if data is None and isinstance(im, dict) and im.get("path"):
            data = Path(im["path"]).read_bytes()
        if data is None:
            raise AnnotateError(f"record {rec['id']!r}, field 'images': no image bytes")
        out.append({"type": "image", "image": data})
    return out


class _Runner:
    """Rounds of requests over one chunk of records, every reply stored in the cache as it arrives."""

    def __init__(self, backend, cache: ReplyCache, summary: AnnotateSummary, bar):
        self.backend, self.cache, self.summary, self.bar = backend, cache, summary, bar
        self.desc = backend.describe()

    def replies(self, jobs: list[tuple[str, list[dict], dict]]) -> dict[str, dict]:
        """jobs: (job id, messages, params) -> {job id: cache entry (or an error entry, not stored)}."""
        from .annotate_backends import Request

        out, todo = {}, []
        for jid, msgs, params in jobs:
            key = request_key(self.desc, msgs, params)
            hit = self.cache.get(key)
            if hit is not None:
                out[jid] = hit
                self.summary.replies_cached += 1
            else:
                todo.append(Request(key=key, messages=msgs, **params))
                todo[-1].jid = jid  # type: ignore[attr-defined]
        for req, rep in self.backend.run(todo):
            self.summary.requests_sent += rep.attempts
            entry = {"key": req.key, "job": req.jid, "text": rep.text, "finish_reason": rep.finish_reason,  # type: ignore[attr-defined]
                     "prompt_tokens": rep.prompt_tokens, "completion_tokens": rep.completion_tokens}
            self.summary.prompt_tokens += rep.prompt_tokens
            self.summary.completion_tokens += rep.completion_tokens
            if rep.error is None:
                self.cache.put(entry)  # transport failures are not stored: a rerun asks again
            else:
                entry["error"] = rep.error
            out[req.jid] = entry  # type: ignore[attr-defined]
            if self.bar is not None:
                self.bar.set_postfix(sent=self.summary.requests_sent, cached=self.summary.replies_cached,
                                     skipped=len(self.summary.skipped),
                                     tokens=self.summary.prompt_tokens + self.summary.completion_tokens, refresh=False)
        return out


def _render_for_annotator(priv: dict, kind: Kind, size, s: Settings) -> str:
    """The privileged text in the annotator's own box convention (what the recheck prompt shows it)."""
    fmt, target = "abs_xyxy", None
    if kind.parser == "boxes" and size is not None:
        if s.convention == "qwen2_5_vl":
            from .boxparse import input_size

            target = input_size(size, s.min_pixels, s.max_pixels)
        elif s.convention in ("qwen3_vl", "qwen2_vl"):
            fmt = "grid1000"
        elif s.convention == "rel01":
            fmt = "rel01"
    return render_privileged(priv, [kind.render], box_format=fmt, image_size=size, target_size=target)


def annotate_records(records: list[dict], s: Settings, runner: _Runner, summary: AnnotateSummary) -> dict[str, dict]:
    """-> {record id: {"value", "attempts", "verdict", "leak"}} for rows that pass, skipped rows counted."""
    kind = s.kind
    params = {"max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed}
    base: dict[str, list[dict]] = {}
    results: dict[str, dict] = {}

    def skip(rid, reason):
        summary.skipped.append({"id": rid, "category": _category(reason), "reason": reason[:300]})

    for rec in records:
        parts = _image_parts(rec, kind)
        if kind.needs_image and not parts:
            skip(rec["id"], "no image (this kind describes an image)")
            continue
        base[rec["id"]] = [{"role": "user", "content": parts + [{"type": "text", "text": fill(s.template, _values(rec))}]}]
    by_id = {r["id"]: r for r in records}

    def size_of(rid):
        sz = (by_id[rid].get("meta") or {}).get("image_size")
        return tuple(sz) if sz else None

    # round 1 (+ one retry that tells the model what was wrong)
    pending = {rid: msgs for rid, msgs in base.items()}
    for attempt in (0, 1):
        got = runner.replies([(rid, msgs, params) for rid, msgs in pending.items()])
        retry = {}
        for rid, msgs in pending.items():
            e = got[rid]
            if e.get("error"):
                skip(rid, f"request failed: {e['error']}")
                continue
            try:
                results[rid] = {"value": parse_reply(kind, e["text"], e.get("finish_reason"), size_of(rid),
                                                     s.convention, s.min_pixels, s.max_pixels),
                                "attempts": attempt + 1}
            except BoxParseError as err:
                if attempt == 0:
                    retry[rid] = msgs + [{"role": "assistant", "content": [{"type": "text", "text": e["text"] or ""}]},
                                         {"role": "user", "content": [{"type": "text", "text":
                                          f"That reply cannot be used: {err}. Reply again, exactly in the format asked for."}]}]
                else:
                    skip(rid, f"{err} (after one retry)")
        summary.retried += len(retry) if attempt == 0 else 0
        pending = retry
        if not pending:
            break

    # recheck (the paper's filter)
    if s.recheck != "off" and results:
        rparams = {**params, "max_tokens": s.recheck_max_tokens}
        rc = summary.recheck
        jobs = {}
        for rid, r in results.items():
            rec = by_id[rid]
            priv = dict(rec["privileged"] or {})
            priv[kind.field] = r["value"]
            text = _render_for_annotator(priv, kind, size_of(rid), s)
            msgs = [{"role": "user", "content": _image_parts(rec, kind) + [{"type": "text", "text": fill(
                s.recheck_template, {**_values(rec), "privileged": text})}]}]
            jobs[rid] = msgs
        verdicts: dict[str, tuple[bool | None, str]] = {}
        for attempt in (0, 1):
            got = runner.replies([(rid, msgs, rparams) for rid, msgs in jobs.items()])
            again = {}
            for rid, msgs in jobs.items():
                e = got[rid]
                if e.get("error"):
                    verdicts[rid] = (None, f"recheck request failed: {e['error']}")
                    continue
                try:
                    verdicts[rid] = parse_verdict(e["text"])
                except ValueError as err:
                    if attempt == 0:
                        again[rid] = msgs + [{"role": "assistant", "content": [{"type": "text", "text": e["text"] or ""}]},
                                             {"role": "user", "content": [{"type": "text", "text":
                                              f"That reply cannot be used: {err}. Reply with the JSON verdict only."}]}]
                    else:
                        verdicts[rid] = (None, f"recheck unparsable: {err}")
            jobs = again
            if not jobs:
                break
        for rid, (ok, reason) in verdicts.items():
            rc["checked"] += 1
            if ok is True:
                rc["passed"] += 1
            elif ok is False:
                rc["failed"] += 1
                rc["reasons"][reason.split(":")[0]] = rc["reasons"].get(reason.split(":")[0], 0) + 1
            else:
                rc["unparsable"] += 1
            results[rid]["verdict"] = {"passed": ok, "reason": reason}
            if ok is not True:
                if s.recheck == "drop":
                    rc["dropped"] += 1
                    skip(rid, f"recheck: {reason or 'failed'}")
                    del results[rid]
                elif s.recheck == "flag":
                    rc["flagged"] += 1
                    results[rid]["flagged"] = True

    # the answer-leak guard (not for the answer ablation itself)
    lk = summary.leak
    for rid in list(results):
        if kind.field == "answer":
            continue
        rec = by_id[rid]
        priv = dict(rec["privileged"] or {})
        priv[kind.field] = results[rid]["value"]
        lk["checked"] += 1
        if contains_answer(privileged_text_for_leak_check(priv, [kind.render]), rec.get("answer"), rec.get("choices")):
            lk["leaked"] += 1
            results[rid]["leak"] = True
            if s.leak_policy == "error":
                raise AnnotateError(f"record {rid!r}, field 'privileged.{kind.field}': the annotation states the final "
                                    f"answer (--leak-policy error; use drop or keep)")
            if s.leak_policy == "drop":
                lk["dropped"] += 1
                skip(rid, "the annotation states the final answer (--leak-policy drop)")
                del results[rid]
    return results


def _provenance(s: Settings, backend_desc: dict, r: dict) -> dict:
    p = {"kind": s.kind.name, "field": s.kind.field, **{k: v for k, v in backend_desc.items() if v is not None},
         "template": s.template_name, "template_sha256": hashlib.sha256(s.template.encode()).hexdigest(),
         "params": {"max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed},
         "attempts": r["attempts"]}
    if s.kind.parser == "boxes":
        p["coords"] = s.convention
        if s.convention == "qwen2_5_vl":
            p["min_pixels"], p["max_pixels"] = s.min_pixels, s.max_pixels
    if "verdict" in r:
        p["recheck"] = {"policy": s.recheck, "template": s.recheck_template_name, **r["verdict"],
                        "flagged": bool(r.get("flagged"))}
    return p


def annotate_dataset(src: str, out: str, s: Settings, backend, splits: list[str] | None = None,
                     limit: int | None = None, overwrite: bool = False, cache_dir: str | None = None) -> dict:
    """Annotate ``src`` (a `dopd-vlm build` folder) into ``out``; returns the build_summary dict."""
    from datasets import DatasetDict, Image, List, load_from_disk
    from tqdm.auto import tqdm

    from .build import finalize_record, write_outputs
    from .records import empty_privileged, record_features

    out_p = Path(out)
    if out_p.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    if Path(src).resolve() == out_p.resolve():
        raise AnnotateError("--out must differ from the input dataset (annotate writes a new folder)")
    try:
        data = load_from_disk(src)
    except FileNotFoundError as e:
        raise AnnotateError(f"{src}: not a dataset folder written by `dopd-vlm build` ({e})") from None
    dd = data if isinstance(data, DatasetDict) else DatasetDict({"train": data})
    names = splits or list(dd)
    missing = [n for n in names if n not in dd]
    if missing:
        raise AnnotateError(f"{src}: no split(s) {missing}; splits: {list(dd)}")
    cache = ReplyCache(Path(cache_dir) if cache_dir else out_p.parent / f"{out_p.name}.annotate-cache")
    out_p.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_p.name}.work-", dir=out_p.parent))
    summaries, written = [], {}
    desc = backend.describe()
    try:
        for name in names:
            ds = dd[name]
            if limit is not None:
                ds = ds.select(range(min(limit, len(ds))))
            summary = AnnotateSummary(split=name, kind=s.kind.name, rows_in=len(ds))
            if s.recheck != "off":
                summary.recheck = {"policy": s.recheck, "checked": 0, "passed": 0, "failed": 0, "unparsable": 0,
                                   "dropped": 0, "flagged": 0, "reasons": {}}
            summary.leak = {"policy": s.leak_policy, "checked": 0, "leaked": 0, "dropped": 0}
            raw = ds.cast_column("images", List(Image(decode=False))) if "images" in ds.column_names else ds
            cols = [c for c in ("id", "images", "question", "choices", "answer", "privileged", "meta") if c in raw.column_names]
            bar = tqdm(total=len(ds), desc=f"annotate {s.kind.name} {name}", disable=s.quiet, dynamic_ncols=True,
                       file=sys.stderr)
            runner = _Runner(backend, cache, summary, bar)
            results: dict[str, dict] = {}
            with contextlib.closing(bar):
                for start in range(0, len(raw), CHUNK):
                    chunk = raw.select_columns(cols).select(range(start, min(start + CHUNK, len(raw))))
                    got = annotate_records(list(chunk), s, runner, summary)
                    if start == 0 and not got and summary.skipped and \
                            all(x["category"] == "request failed" for x in summary.skipped):
                        raise AnnotateError(f"the endpoint answered none of the first {len(chunk)} requests: "
                                            f"{summary.skipped[0]['reason']}")
                    results.update(got)
                    bar.update(len(chunk))
            keep = [i for i, rid in enumerate(ds["id"]) if rid in results]

            def apply(row, _results=results):
                rec = {k: row[k] for k in row.keys()}  # datasets hands a lazy row
                r = _results[rec["id"]]
                rec["privileged"] = {**empty_privileged(), **(rec["privileged"] or {}), s.kind.field: r["value"]}
                meta = dict(rec["meta"] or {})
                kinds = s.render_kinds if s.render_kinds is not None else \
                    list(dict.fromkeys([*(meta.get("privileged_kinds") or []), s.kind.render]))
                meta["annotate"] = {**(meta.get("annotate") or {}), s.kind.name: _provenance(s, desc, r)}
                if r.get("flagged"):
                    meta["privileged_flagged"] = True
                rec["meta"] = meta
                rec, _ = finalize_record(rec, kinds)
                return rec

            feats = record_features()
            out_ds = raw.select(keep).map(apply, features=feats, desc="writing", load_from_cache_file=False,
                                         cache_file_name=str(work / f"{name}.arrow"))
            summary.kept = len(out_ds)
            from dopd_vlm.privilege_check import empty_privilege_counts

            summary.privileged_empty = empty_privilege_counts(out_ds, None)
            if not s.quiet:
                print(summary.text())
            summaries.append(summary)
            written[name] = out_ds
        if not any(len(v) for v in written.values()):
            raise AnnotateError("kept 0 rows: " + "; ".join(
                f"{x.split}: " + (", ".join(f"{k} {v}" for k, v in x.as_dict()["skip_reasons"].items()) or "no rows")
                for x in summaries) + f" (replies are kept in {cache.folder}; nothing was written)")
        write_outputs(written, out, summaries, overwrite=overwrite,
                      extra={"annotate": {"source": str(src), "kind": s.kind.name, **desc,
                                          "template": s.template_name, "recheck": s.recheck,
                                          "coords": s.convention if s.kind.parser == "boxes" else None,
                                          "leak_policy": s.leak_policy, "cache": str(cache.folder)}})
    finally:
        cache.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"splits": [x.as_dict() for x in summaries]}


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("dataset", nargs="?", help="input dataset folder (written by `dopd-vlm build`)")
    parser.add_argument("--out", help="output dataset folder (written atomically; see --overwrite)")
    parser.add_argument("--kind", help=f"privileged information to write: {', '.join(KINDS)}")
    parser.add_argument("--list-kinds", action="store_true", help="list the kinds and their templates, then exit")
    g = parser.add_argument_group("model")
    g.add_argument("--backend", choices=("openai", "local"), default="openai",
                   help="openai: an OpenAI-compatible endpoint (default); local: a checkpoint on this machine")
    g.add_argument("--model", help="model name the endpoint serves (openai), or a checkpoint folder / Hub id (local)")
    g.add_argument("--base-url", help="endpoint URL, e.g. http://127.0.0.1:8000/v1 (default: the openai client's)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default OPENAI_API_KEY; local servers need none)")
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight (openai; default 8)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per request (openai; default 120)")
    g.add_argument("--retries", type=int, default=4,
                   help="retries with exponential backoff on connection errors, timeouts, 429 and 5xx (default 4)")
    g.add_argument("--local-engine", choices=("auto", "vllm", "transformers"), default="auto",
                   help="local backend: vLLM's LLM when installed (auto), else transformers generate")
    g.add_argument("--batch-size", type=int, default=8, help="local backend: requests per batch (default 8)")
    g.add_argument("--max-tokens", type=int, default=1024, help="reply budget per request (default 1024)")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy, reproducible)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0, help="request seed (default 0)")
    g = parser.add_argument_group("prompts and parsing")
    g.add_argument("--template", help="prompt template file (default: the shipped one of --kind); placeholders "
                                      "{question}, {options}, {answer}")
    g.add_argument("--coords", choices=CONVENTIONS, default=None,
                   help="the annotator's box convention, required for the box kinds (a wrong guess would "
                        "misplace every box silently): qwen2_5_vl (absolute pixels of its resized input), "
                        "qwen3_vl / qwen2_vl (0-1000), abs (pixels of the original), rel01 (0-1)")
    g.add_argument("--min-pixels", type=int, default=QWEN2_5_VL_MIN_PIXELS,
                   help=f"qwen2_5_vl: the annotator processor's min_pixels (default {QWEN2_5_VL_MIN_PIXELS})")
    g.add_argument("--max-pixels", type=int, default=QWEN2_5_VL_MAX_PIXELS,
                   help=f"qwen2_5_vl: the annotator processor's max_pixels (default {QWEN2_5_VL_MAX_PIXELS})")
    g.add_argument("--recheck", choices=RECHECK_POLICIES, default="drop",
                   help="recheck each annotation with a second prompt: drop rows that fail (default, the paper's "
                        "filter), flag them in meta, keep them (verdict recorded), or off")
    g.add_argument("--recheck-template", help="recheck prompt file (default: the shipped recheck.txt); "
                                              "placeholders {question}, {options}, {answer}, {privileged}")
    g.add_argument("--recheck-max-tokens", type=int, default=256)
    g = parser.add_argument_group("output")
    g.add_argument("--split", action="append", help="split(s) to annotate (default: all)")
    g.add_argument("--limit", type=int, help="at most N rows per split")
    g.add_argument("--leak-policy", choices=("error", "drop", "keep"), default="drop",
                   help="annotations that state the final answer: fail, drop the row (default), or keep it")
    g.add_argument("--privileged", help="comma-separated kinds rendered into privileged_context (default: the "
                                        "record's kinds plus the new one)")
    g.add_argument("--cache-dir", help="reply cache folder (default: OUT.annotate-cache beside the output)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args) -> int:
    if args.list_kinds:
        for k in KINDS.values():
            print(f"{k.name:15s} -> privileged.{k.field:13s} {k.doc}")
        return 0
    for flag, v in (("DATASET", args.dataset), ("--out", args.out), ("--kind", args.kind), ("--model", args.model)):
        if not v:
            print(f"dopd-vlm annotate: {flag} is required (see --help)", file=sys.stderr)
            return 2
    kind = kind_of(args.kind)
    if kind.parser == "boxes" and args.coords is None:
        print(f"dopd-vlm annotate: --kind {kind.name} needs --coords, the annotator's box convention "
              f"({', '.join(CONVENTIONS)}): e.g. qwen2_5_vl for Qwen2.5-VL, qwen3_vl for Qwen3-VL", file=sys.stderr)
        return 2
    tpl, tpl_name = template_text(args.template or kind.name)
    rtpl, rtpl_name = template_text(args.recheck_template or "recheck")
    render = None
    if args.privileged is not None:
        from dopd_vlm.privileged import canonical_kind

        render = [canonical_kind(k.strip()) for k in args.privileged.split(",") if k.strip()]
    s = Settings(kind=kind, template=tpl, template_name=tpl_name, recheck=args.recheck, recheck_template=rtpl,
                 recheck_template_name=rtpl_name, convention=args.coords or "qwen2_5_vl", min_pixels=args.min_pixels,
                 max_pixels=args.max_pixels, max_tokens=args.max_tokens, recheck_max_tokens=args.recheck_max_tokens,
                 temperature=args.temperature, top_p=args.top_p, seed=args.seed, leak_policy=args.leak_policy,
                 render_kinds=render, quiet=args.quiet)
    from .annotate_backends import BackendError, LocalBackend, OpenAIBackend

    try:
        if args.backend == "openai":
            backend = OpenAIBackend(args.model, base_url=args.base_url, api_key_env=args.api_key_env,
                                    concurrency=args.concurrency, timeout=args.timeout, max_retries=args.retries)
        else:
            backend = LocalBackend(args.model, batch_size=args.batch_size, engine=args.local_engine)
    except BackendError as e:
        print(f"dopd-vlm annotate: {e}", file=sys.stderr)
        return 2
    try:
        annotate_dataset(args.dataset, args.out, s, backend, splits=args.split, limit=args.limit,
                         overwrite=args.overwrite, cache_dir=args.cache_dir)
    except (FileExistsError, AnnotateError) as e:
        print(f"dopd-vlm annotate: {e}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    return 0
