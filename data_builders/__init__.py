"""Privileged datasets from the datasets users already have, plus the offline synthetic scenes.

Modules (``docs/data.md``):
  records     the record schema, ``validate_record``, image resolution, canonical boxes, Features
  scenes      the synthetic scene generator (grid / free layouts, CLEVR-style programs and executor)
  synthetic   ``build_synthetic(out_dir, n_train, n_test, seed, layout, privileged_kinds, ...)``
  build       conversion, leak policy, contamination guard, atomic writing
  sources     loading a Hub id or local files, ``run_source_build``
  scienceqa, aokvqa, captions, regions, reasoning, clevr, textmath   one module per source family
  importers   TRL / LLaVA / LLaMA-Factory / qwen-vl-utils / record files -> records
  exporters   records -> TRL / LLaVA / LLaMA-Factory / qwen-vl-utils / record JSON lines
  registry    builder names for ``dopd-vlm build``
The privileged-text renderer and the answer-leak guard live in ``dopd_vlm.privileged``.
Imports stay light: ``datasets`` is imported inside functions.
"""
