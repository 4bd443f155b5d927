"""Processor-aware collation: records -> one left-padded ``ViewBatch`` per view.

Each view (plain, privileged) of a batch of records is rendered with the chat template and run
through the model's own processor, so a teacher and a student with different processors or image
resolutions (min/max pixels) each get their own tokens and vision tensors; the shared response is
later aligned by each view's own prompt length (``scoring.py``). Left padding puts every prompt's
last token at column ``T - 1``, so a response always starts at column ``T``.

Stable API::

    collate(records, processor, adapter, privileged_kinds=(), templates=None, views=("plain", "priv"))
        -> dict[str, ViewBatch]
    collate_messages(messages_list, images_list, processor, adapter) -> ViewBatch
    ViewBatch.repeat_interleave(G)   # P prompts -> B = P*G rows, prompt-major (rows p*G .. p*G+G-1)
    ViewBatch.select(indices)        # sub-batch (e.g. micro-batches), left padding trimmed

Shape legend: ``P`` prompts, ``G`` rollouts per prompt, ``B`` rows, ``T`` prompt tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from dopd_vlm.images import strict_decoding
from dopd_vlm.views import RecordError, count_image_parts, record_id, render_views

VIEWS = ("plain", "priv")


@dataclass
class ViewBatch:
    """One view of a batch: left-padded text tensors, vision tensors and what is needed to cut
    and expand them per sample without re-running the processor."""

    input_ids_B_T: torch.Tensor
    attention_mask_B_T: torch.Tensor
    token_extras: dict[str, torch.Tensor]  # per-token [B, T] tensors, e.g. mm_token_type_ids
    vision: dict[str, torch.Tensor]  # family-specific vision tensors (adapter.split_vision/cat_vision)
    images_per_sample: list[int]
    adapter: object
    pad_token_id: int
    vocab_size: int  # tokenizer size: logits are sliced to it
    placeholder_ids: list[int] = field(default_factory=list)  # image/video placeholder token ids
    texts: list[str] = field(default_factory=list)  # rendered chat text per row (for vLLM)
    images: list[list] = field(default_factory=list)  # the PIL images per row (for vLLM)

    def __post_init__(self):
        B, T = self.input_ids_B_T.shape
        if self.attention_mask_B_T.shape != (B, T):
            raise ValueError(f"attention_mask {tuple(self.attention_mask_B_T.shape)} != input_ids {(B, T)}")
        for k, v in self.token_extras.items():
            if v.shape != (B, T):
                raise ValueError(f"token extra {k!r} has shape {tuple(v.shape)}, expected {(B, T)}")
        if len(self.images_per_sample) != B:
            raise ValueError(f"images_per_sample has {len(self.images_per_sample)} entries for {B} rows")
        if B and not bool(self.attention_mask_B_T[:, -1].all()):
            raise ValueError("prompts must be left padded (a row's last column is padding)")

    @property
    def num_samples(self) -> int:
        return self.input_ids_B_T.shape[0]

    @property
    def prompt_len(self) -> int:
        return self.input_ids_B_T.shape[1]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``generate`` / a forward over the prompts alone."""
        return dict(input_ids=self.input_ids_B_T, attention_mask=self.attention_mask_B_T,
                    **self.token_extras, **self.vision)

    def to(self, device) -> ViewBatch:
        return replace(self, input_ids_B_T=self.input_ids_B_T.to(device),
                       attention_mask_B_T=self.attention_mask_B_T.to(device),
                       token_extras={k: v.to(device) for k, v in self.token_extras.items()},
                       vision={k: v.to(device) for k, v in self.vision.items()})

    def select(self, indices: Sequence[int]) -> ViewBatch:
        """Rows ``indices`` (in that order, repeats allowed); columns that are padding in every
        selected row are dropped (padding does not change a row's scores)."""
        idx = [int(i) for i in indices]
        if any(i < 0 or i >= self.num_samples for i in idx):
            raise IndexError(f"indices {idx} out of range for {self.num_samples} rows")
        idx_t = torch.tensor(idx, dtype=torch.long, device=self.input_ids_B_T.device)
        mask = self.attention_mask_B_T[idx_t]
        lengths = mask.sum(-1)
        start = self.prompt_len - int(lengths.max()) if idx else self.prompt_len
        parts = self.adapter.split_vision(self.vision, self.images_per_sample)
        return replace(
            self,
            input_ids_B_T=self.input_ids_B_T[idx_t, start:],
            attention_mask_B_T=mask[:, start:],
            token_extras={k: v[idx_t, start:] for k, v in self.token_extras.items()},
            vision=self.adapter.cat_vision([parts[i] for i in idx]),
            images_per_sample=[self.images_per_sample[i] for i in idx],
            texts=[self.texts[i] for i in idx] if self.texts else [],
            images=[self.images[i] for i in idx] if self.images else [],
        )

    def repeat_interleave(self, repeats: int) -> ViewBatch:
        """Each row ``repeats`` times in a row: P prompts -> B = P*G rows in prompt-major order
        (rows ``p*G .. p*G+G-1`` are prompt ``p``), the order of ``sample_rollouts``."""
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        return self.select([i for i in range(self.num_samples) for _ in range(repeats)])


def collate_messages(messages_list: list[list[dict]], images_list: list[list], processor, adapter,
                     add_generation_prompt: bool = True) -> ViewBatch:
    """Render and encode already-built message lists (one per row) into a left-padded ViewBatch."""
    enc = adapter.encode_prompts(processor, messages_list, images_list, add_generation_prompt=add_generation_prompt)
    text_keys = {"input_ids", "attention_mask", *adapter.token_extra_keys}
    missing = text_keys - set(enc)
    if missing:
        raise ValueError(f"{adapter.family} processor output lacks {sorted(missing)}")
    return ViewBatch(
        input_ids_B_T=enc["input_ids"],
        attention_mask_B_T=enc["attention_mask"],
        token_extras={k: enc[k] for k in adapter.token_extra_keys},
        vision={k: v for k, v in enc.items() if k not in text_keys},
        images_per_sample=[count_image_parts(m) for m in messages_list],
        adapter=adapter,
        pad_token_id=adapter.pad_token_id(processor),
        vocab_size=adapter.vocab_size(processor),
        placeholder_ids=adapter.placeholder_token_ids(processor),
        texts=[adapter.render_chat(processor, m, add_generation_prompt) for m in messages_list],
        images=[list(imgs) for imgs in images_list],
    )


def _encode_naming_record(records, messages_list, images_list, processor, adapter, view) -> ViewBatch:
    """``collate_messages``; when the processor refuses the batch, the rows are encoded one by one to
    name the record it refuses (e.g. an image whose aspect ratio Qwen-VL's smart_resize rejects)."""
    try:
        return collate_messages(messages_list, images_list, processor, adapter)
    except (ValueError, TypeError, IndexError, RuntimeError) as e:
        if isinstance(e, RecordError):
            raise
        for rec, msgs, imgs in zip(records, messages_list, images_list):
            try:
                collate_messages([msgs], [imgs], processor, adapter)
            except (ValueError, TypeError, IndexError, RuntimeError) as row_e:
                sizes = ", ".join(f"{im.size[0]}x{im.size[1]}" for im in imgs if hasattr(im, "size"))
                raise RecordError(f"record {record_id(rec)!r}, field 'images' ({view} view): the {adapter.family} "
                                  f"processor refuses it (images {sizes or 'none'}): {type(row_e).__name__}: {row_e}") from e
        raise


def collate(records: list[dict], processor, adapter, privileged_kinds: str | Sequence[str] = (),
            templates: dict | None = None, views: Sequence[str] = VIEWS) -> dict[str, ViewBatch]:
    """Render ``records`` into the requested views (``"plain"``, ``"priv"``) for one model's
    processor; returns ``{view: ViewBatch}`` with P rows each (expand with ``repeat_interleave``)."""
    unknown = set(views) - set(VIEWS)
    if unknown:
        raise ValueError(f"unknown views {sorted(unknown)}; known: {VIEWS}")
    if not records:
        raise ValueError("collate got no records")
    rendered = {"plain": [], "priv": []}
    images_list = []
    for rec in records:
        for i, im in enumerate(rec.get("images") or []):  # decode now: a truncated file names its record
            try:
                with strict_decoding():
                    im.load()
            except (OSError, SyntaxError) as e:
                raise RecordError(f"record {record_id(rec)!r}, field 'images[{i}]': cannot decode image ({e})") from e
            size = (rec.get("meta") or {}).get("image_size")
            if i == 0 and size and hasattr(im, "size") and list(im.size) != list(size):  # e.g. EXIF rotation
                raise RecordError(f"record {record_id(rec)!r}, field 'meta.image_size': {list(size)} but images[0] "
                                  f"decodes as {im.size[0]}x{im.size[1]}; its boxes describe other pixels (rebuild "
                                  "the dataset with dopd-vlm build, which orients and converts images once)")
        plain, priv, images = render_views(rec, privileged_kinds, templates, adapter=adapter, processor=processor)
        if images and not adapter.takes_images:
            raise ValueError(f"record {record_id(rec)!r}, field 'images': the {adapter.family} model takes no images")
        rendered["plain"].append(plain)
        rendered["priv"].append(priv)
        images_list.append(images)
    out = {v: _encode_naming_record(records, rendered[v], images_list, processor, adapter, v) for v in views}
    limit = adapter.context_length(processor)
    for v, batch in out.items():
        for i, n in enumerate(batch.attention_mask_B_T.sum(-1).tolist()):
            if n > limit:
                field = "privileged" if v == "priv" else "prompt"
                raise RecordError(f"record {record_id(records[i])!r}, field '{field}' ({v} view): {n} prompt tokens "
                                  f"exceed the model's context of {limit}")
    return out
