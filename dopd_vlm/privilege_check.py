"""Never train on empty privilege: count rows whose privileged context is empty, refuse or warn.

DOPD routes tokens to regimes by comparing the privileged and the plain view (docs/method.md §2-§4).
When the privileged context ``p`` renders to nothing, the two views are identical, the privilege
gap is exactly 0, and DOPD silently becomes a different method (the LL / HS losses are 0 while
half the tokens are routed there). This module makes that visible:

- ``empty_privilege_counts(rows, kinds)``: per kind, how many rows render nothing for that kind,
  and how many render nothing for all of them together (``build`` and ``annotate`` summaries);
- ``check_training_data(data, kinds, policies, max_empty_share)``: what ``dopd-vlm train`` runs
  before loading any model. With a privileged policy in the routing table it raises
  ``EmptyPrivilegeError`` when every row is empty, or more than ``max_empty_share`` of them
  (``data.max_empty_privileged_share``), and warns when some are; the message says how many rows
  are empty, which kinds were asked and which kinds the dataset was built with
  (``meta.privileged_kinds``), so a ``hints`` dataset trained with ``[regions]`` is caught;
- ``teacher_view_text`` / ``show_teacher_view``: the privileged text exactly as the teacher's
  adapter renders it (its box convention), printed once at start and written into ``samples.jsonl``.

Reads only the ``privileged`` and ``meta`` columns (images are never decoded).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dopd_vlm.privileged import KINDS, canonical_kind, render_privileged

PRIVILEGED_POLICIES = ("teacher_priv", "student_priv")


class EmptyPrivilegeError(ValueError):
    """Training would score a privileged policy on rows whose privileged context is empty."""


def _rendered(privileged: dict, kinds: Sequence[str], image_size) -> str:
    """The rendered text for ``kinds`` (absolute boxes; emptiness does not depend on the convention)."""
    if not kinds:
        return ""
    try:
        return render_privileged(privileged or {}, list(kinds), box_format="abs_xyxy", image_size=image_size)
    except ValueError:
        # boxes without meta.image_size: the views would fail on this row anyway; count it as not empty
        # here (the renderer's own error names the record when the row is rendered for training).
        return "<unrenderable>"


def _iter_rows(rows) -> Iterable[tuple[dict, dict]]:
    """(privileged, meta) of each row of a ``datasets.Dataset`` (batched, no image decoding) or a list."""
    if hasattr(rows, "select_columns"):
        sub = rows.select_columns([c for c in ("privileged", "meta") if c in rows.column_names])
        for batch in sub.iter(batch_size=1024):
            metas = batch.get("meta") or [None] * len(batch["privileged"])
            yield from zip(batch["privileged"], metas)
    else:
        for r in rows:
            yield r.get("privileged") or {}, r.get("meta") or {}


def empty_privilege_counts(rows, kinds: Sequence[str] | None) -> dict:
    """``{"rows": N, "kinds": [...], "empty_all": n, "empty_by_kind": {kind: n}}`` for ``kinds``.

    ``kinds=None`` takes each row's own ``meta.privileged_kinds`` (what its build rendered).
    ``empty_all`` counts rows whose whole privileged context (all kinds together) is empty.
    """
    wanted = None if kinds is None else [canonical_kind(k) for k in kinds]
    n = empty_all = 0
    by_kind: dict[str, int] = {}
    for priv, meta in _iter_rows(rows):
        n += 1
        meta = meta or {}
        ks = wanted if wanted is not None else [canonical_kind(k) for k in meta.get("privileged_kinds") or []]
        size = meta.get("image_size")
        any_text = False
        for k in ks:
            empty = not _rendered(priv, [k], size)
            by_kind[k] = by_kind.get(k, 0) + int(empty)
            any_text = any_text or not empty
        empty_all += int(not any_text)
    return {"rows": n, "kinds": wanted, "empty_all": empty_all, "empty_by_kind": by_kind}


def describe_counts(counts: dict, prefix: str = "") -> str:
    """One line for a summary: ``privileged context empty in 3 of 10 rows (regions 3, captions 10)``."""
    per = ", ".join(f"{k} {v}" for k, v in counts["empty_by_kind"].items())
    line = (f"{prefix}privileged context empty in {counts['empty_all']} of {counts['rows']} rows"
            + (f" (per kind: {per})" if per else " (no privileged kinds rendered)"))
    never = [k for k, v in counts["empty_by_kind"].items() if counts["rows"] and v == counts["rows"]]
    if never:
        line += (f"; warning: {', '.join(never)} empty in every row (the source does not carry "
                 f"{'it' if len(never) == 1 else 'them'}; write it with `dopd-vlm annotate`)")
    return line


def _dataset_profile(rows) -> tuple[dict, dict]:
    """(rows per kind that have content, rows per built kind list) over the whole dataset."""
    available = {k: 0 for k in KINDS}
    built: dict[str, int] = {}
    for priv, meta in _iter_rows(rows):
        meta = meta or {}
        size = meta.get("image_size")
        for k in KINDS:
            if _rendered(priv, [k], size) and k != "answer":
                available[k] += 1
        key = ",".join(meta.get("privileged_kinds") or []) or "(none)"
        built[key] = built.get(key, 0) + 1
    return {k: v for k, v in available.items() if v}, built


def check_training_data(data, kinds: Sequence[str], policies: Iterable[str], max_empty_share: float = 1.0,
                        warn=print, where: str = "the dataset") -> dict | None:
    """Refuse (``EmptyPrivilegeError``) or warn before training on empty privileged contexts.

    Refuses when the table scores a privileged policy and every row's context is empty, or more than
    ``max_empty_share`` of the rows are empty; warns when some rows are. Returns the counts (None when
    the table scores no privileged policy, e.g. vanilla OPD).
    """
    if len(data) == 0:
        raise EmptyPrivilegeError(f"{where} has 0 rows: nothing to train on (was the build empty? see its "
                                  "build_summary.json)")
    if not set(policies) & set(PRIVILEGED_POLICIES):
        return None
    if not 0.0 <= max_empty_share <= 1.0:
        raise ValueError(f"data.max_empty_privileged_share must be in [0, 1], got {max_empty_share}")
    counts = empty_privilege_counts(data, kinds)
    n, n_empty = counts["rows"], counts["empty_all"]
    if n_empty == 0:
        return counts
    share = n_empty / n
    available, built = _dataset_profile(data)
    msg = (f"{where}: the privileged context is empty in {n_empty} of {n} rows ({share:.1%}) for "
           f"data.privileged_kinds={list(kinds)} (empty per kind: {counts['empty_by_kind']}); the build "
           f"rendered kinds {built}; rows with content per kind: {available or 'none'}")
    hint = ""
    usable = [k for k, v in available.items() if v]
    if usable and not set(usable) & {canonical_kind(k) for k in kinds}:
        hint = (f"; set data.privileged_kinds to kinds the dataset carries, e.g. [{', '.join(usable)}], "
                "or write the missing ones with `dopd-vlm annotate`")
    elif not usable:
        hint = ("; the dataset carries no privileged information: write it with `dopd-vlm annotate` "
                "(e.g. --kind boxes_labels) or build with --privileged")
    else:
        hint = "; fill the empty rows with `dopd-vlm annotate` or drop them"
    if n_empty == n or share > max_empty_share:
        raise EmptyPrivilegeError(
            msg + hint + f". Training would score the teacher's privileged view on identical plain text "
            f"(DOPD's privilege gap would be 0); refusing (data.max_empty_privileged_share={max_empty_share})")
    warn(f"warning: {msg}{hint} (allowed by data.max_empty_privileged_share={max_empty_share})")
    return counts


def teacher_view_text(record: dict, kinds: Sequence[str], policy=None) -> str:
    """The privileged text the teacher sees for ``record`` (its adapter's box convention)."""
    from dopd_vlm.views import privileged_text

    if policy is None:
        return privileged_text(record, list(kinds))
    return privileged_text(record, list(kinds), adapter=policy.adapter, processor=policy.processor)


def show_teacher_view(data, kinds: Sequence[str], policy=None, out=print, max_chars: int = 600) -> str | None:
    """Print one example of the teacher's privileged view (the first row with a non-empty context)."""
    for i in range(min(len(data), 64)):
        rec = data[i]
        text = teacher_view_text(rec, kinds, policy)
        if text:
            shown = text if len(text) <= max_chars else text[:max_chars] + " ..."
            out(f"teacher's privileged view of {rec.get('id')!r} (data.privileged_kinds={list(kinds)}):\n"
                f"  question: {rec.get('question', '')[:200]}\n  privileged: " + shown.replace("\n", "\n              "))
            return text
    out(f"teacher's privileged view: empty in the first {min(len(data), 64)} rows "
        f"(data.privileged_kinds={list(kinds)})")
    return None
