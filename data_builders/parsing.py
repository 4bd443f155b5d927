"""Small text parsers shared by the builders: final answers, tagged traces, conversation turns."""

from __future__ import annotations

import ast
import re

IMAGE_TAG = "<image>"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, else None."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    i = starts[-1]
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1].strip() if depth == 0 else None


def tagged(text: str, tag: str) -> str | None:
    """Content of ``<TAG>...</TAG>`` (first occurrence), else None."""
    m = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return m.group(1).strip() if m else None


def split_think(text: str) -> tuple[str | None, str]:
    """``<think>trace</think> final`` -> (trace, final text)."""
    m = re.search(r"<think>(.*?)</think>(.*)", text, re.DOTALL)
    if not m:
        return None, text.strip()
    return m.group(1).strip(), m.group(2).strip()


def gsm8k_answer(text: str) -> tuple[str, str]:
    """GSM8K ``answer`` -> (worked solution, final answer after ``####``)."""
    if "####" not in text:
        raise ValueError("no '####' final-answer marker")
    sol, _, final = text.rpartition("####")
    return sol.strip(), final.strip().replace(",", "")


def strip_image_tags(text: str) -> str:
    return "\n".join(line for line in text.replace(IMAGE_TAG, "").strip().splitlines()).strip()


def parse_list(value) -> list:
    """A list column that some copies store as its Python repr string."""
    if isinstance(value, str):
        parsed = ast.literal_eval(value)
        if not isinstance(parsed, list):
            raise ValueError(f"expected a list, got {type(parsed).__name__}")
        return parsed
    return list(value)


def interleave(text: str, n_images: int) -> list[dict]:
    """User content parts from text with ``<image>`` tags; images go first when there are no tags."""
    n_tags = text.count(IMAGE_TAG)
    if n_tags == 0:
        parts = [{"type": "image", "text": None} for _ in range(n_images)]
        return parts + [{"type": "text", "text": text.strip()}]
    if n_tags != n_images:
        raise ValueError(f"{n_tags} {IMAGE_TAG} tags but {n_images} images")
    parts = []
    for k, chunk in enumerate(text.split(IMAGE_TAG)):
        if k:
            parts.append({"type": "image", "text": None})
        if chunk.strip():
            parts.append({"type": "text", "text": chunk.strip()})
    return parts
