"""Chat-template options (``model.chat_template_kwargs`` / the lmms-eval model arg) reach every
prompt: training views (collate), rollouts' prompt texts, the scoring probe and the lmms-eval model,
on a tiny text-only checkpoint that carries Qwen3's real chat template, which opens the assistant
turn with an empty ``<think>`` block when ``enable_thinking`` is false (non-thinking mode) and
leaves it open otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Qwen3's chat template as published with the Qwen3 checkpoints (tokenizer_config.json
# "chat_template"), verbatim; the last lines hold the enable_thinking switch.
QWEN3_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

THINKING_HEADER = "<|im_start|>assistant\n"
NON_THINKING_HEADER = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
QUESTION = "What is 9 times 8? Put the final answer in \\boxed{}."


@pytest.fixture(scope="module")
def qwen3_ckpt(tiny_ckpt, tmp_path_factory) -> str:
    """A tiny text-only Qwen3 checkpoint whose tokenizer carries the real Qwen3 chat template."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("qwen3_template") / "ckpt"
    shutil.copytree(tiny_ckpt("qwen3"), out)
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    for stale in out.glob("chat_template.json*"):  # keep exactly one template: the tokenizer's
        stale.unlink()
    return str(out)


def _record():
    return {"id": "test/default/test/0", "source": {"dataset": "test"}, "images": [],
            "prompt": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}], "question": QUESTION,
            "choices": None, "answer": "72", "privileged": {"hints": ["multiply 9 by 8"]}, "meta": {}}


def test_template_honours_enable_thinking(qwen3_ckpt):
    """The switch is real: the same template renders thinking (default) and non-thinking prompts."""
    from dopd_vlm.train import load_policy

    msgs = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    default = load_policy(qwen3_ckpt, "float32", False, "", "cpu")
    non_thinking = load_policy(qwen3_ckpt, "float32", False, "", "cpu",
                               chat_template_kwargs={"enable_thinking": False})
    assert default.adapter.render_chat(default.processor, msgs).endswith(QUESTION + "<|im_end|>\n" + THINKING_HEADER)
    assert non_thinking.adapter.render_chat(non_thinking.processor, msgs).endswith(NON_THINKING_HEADER)


def test_training_views_rollout_texts_and_scoring_use_the_options(qwen3_ckpt):
    from dopd_vlm.collate import collate
    from dopd_vlm.scoring import _response_ids
    from dopd_vlm.train import load_policy

    pol = load_policy(qwen3_ckpt, "float32", False, "", "cpu", chat_template_kwargs={"enable_thinking": False})
    tok = pol.adapter.tokenizer(pol.processor)
    batches = collate([_record(), _record()], pol.processor, pol.adapter, ["hints"])
    assert set(batches) == {"plain", "priv"}
    for view, batch in batches.items():
        # the prompt texts (what vLLM rollouts are given) and the token ids (HF rollouts, scoring)
        assert all(t.endswith(NON_THINKING_HEADER) for t in batch.texts), view
        ids = batch.input_ids_B_T[0][batch.attention_mask_B_T[0].bool()].tolist()
        assert tok.decode(ids) == batch.texts[0], view
    # the scoring probe renders its assistant turn after the same non-thinking header
    _, header = _response_ids(pol.processor, pol.adapter, "What color is the circle?", "red")
    assert header == "<|im_end|>\n" + NON_THINKING_HEADER


def test_lmms_eval_model_renders_like_training(qwen3_ckpt):
    """The lmms-eval model with chat_template_kwargs (JSON, as given in --model_args) or the
    enable_thinking shorthand encodes exactly the training view's prompt."""
    from dopd_vlm.collate import collate
    from dopd_vlm.lmms_model import DopdVLM
    from dopd_vlm.train import load_policy

    pol = load_policy(qwen3_ckpt, "float32", False, "", "cpu", chat_template_kwargs={"enable_thinking": False})
    train_ids = collate([_record()], pol.processor, pol.adapter)["plain"].input_ids_B_T
    msgs = [[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]]
    for kwargs in ({"chat_template_kwargs": '{"enable_thinking": false}'}, {"enable_thinking": "false"}):
        lm = DopdVLM(pretrained=qwen3_ckpt, **kwargs)
        assert lm.adapter.chat_template_kwargs == {"enable_thinking": False}
        enc = lm.adapter.encode_prompts(lm.processor, msgs, [[]])
        assert enc["input_ids"].tolist() == train_ids.tolist()
    plain = DopdVLM(pretrained=qwen3_ckpt)
    assert plain.adapter.render_chat(plain.processor, msgs[0]).endswith(THINKING_HEADER)
    with pytest.raises(ValueError, match="not a JSON object"):
        DopdVLM(pretrained=qwen3_ckpt, chat_template_kwargs="enable_thinking:false")


def test_paper_presets_are_non_thinking():
    from dopd_vlm.config import TrainConfig, load_config

    presets = Path(__file__).resolve().parents[2] / "dopd_vlm" / "presets"
    for name in ("paper_llm_qwen3_8b_to_1p7b.yaml", "paper_vlm_qwen3vl_8b_to_2b.yaml"):
        cfg = load_config(TrainConfig, presets / name)
        assert cfg.model.chat_template_kwargs == {"enable_thinking": False}, name
    assert TrainConfig().model.chat_template_kwargs == {}


def test_subprocess_command_carries_the_options_through_lmms_eval_parsing(tmp_path):
    """`dopd-vlm eval --subprocess`: the JSON model arg survives lmms-eval's own model_args split."""
    from lmms_eval.utils import simple_parse_args_string

    from dopd_vlm.evaluate import lmms_eval_command
    from dopd_vlm.lmms_model import parse_chat_template_kwargs

    cmd = lmms_eval_command("ck", ["t"], tmp_path, None, None, 2, "cpu", None, 2048,
                            chat_template_kwargs={"enable_thinking": False, "custom": 1})
    args = simple_parse_args_string(cmd[cmd.index("--model_args") + 1])
    assert args["max_new_tokens"] == 2048
    assert parse_chat_template_kwargs(args["chat_template_kwargs"]) == {"enable_thinking": False, "custom": 1}


def test_a_trained_checkpoint_is_evaluated_with_its_runs_options(qwen3_ckpt, tmp_path):
    """No chat-template option given: a checkpoint inside a training run folder uses the run's
    model.chat_template_kwargs (its config.yaml, as save_config writes it); '{}' turns that off."""
    from dopd_vlm.config import TrainConfig, load_config, save_config
    from dopd_vlm.eval_harness import resolve_chat_template_kwargs
    from dopd_vlm.lmms_model import DopdVLM

    run = tmp_path / "run"
    ckpt = run / "checkpoint-000010"
    shutil.copytree(qwen3_ckpt, ckpt)
    preset = Path(__file__).resolve().parents[2] / "dopd_vlm" / "presets" / "paper_llm_qwen3_8b_to_1p7b.yaml"
    save_config(load_config(TrainConfig, preset), run / "config.yaml")
    msgs = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    trained = DopdVLM(pretrained=str(ckpt))
    assert trained.adapter.chat_template_kwargs == {"enable_thinking": False}
    assert trained.adapter.render_chat(trained.processor, msgs).endswith(NON_THINKING_HEADER)
    assert DopdVLM(pretrained=str(ckpt), chat_template_kwargs="{}").adapter.chat_template_kwargs == {}
    assert DopdVLM(pretrained=qwen3_ckpt).adapter.chat_template_kwargs == {}  # no run folder: template defaults
    # the harness server resolves the same way
    assert resolve_chat_template_kwargs(ckpt, None) == {"enable_thinking": False}
    assert resolve_chat_template_kwargs(ckpt, {"enable_thinking": True}) == {"enable_thinking": True}
