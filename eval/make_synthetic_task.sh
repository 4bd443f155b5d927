#!/usr/bin/env bash
# Regenerates eval/tasks/synthetic_scenes: 60 held-out scenes (the generator's `test` split, seed 0,
# the demo's grid layout), student view only. Run from the repository root.
set -euo pipefail
data=outputs/synthetic_scenes_eval
dopd-vlm build synthetic_scenes --out "$data" --split test --limit 60 --seed 0 --layout grid --overwrite
# one-word answers: a short budget (make-task defaults to a reasoning budget)
dopd-vlm eval make-task "$data" --name synthetic_scenes --out eval/tasks/synthetic_scenes --max-new-tokens 16
