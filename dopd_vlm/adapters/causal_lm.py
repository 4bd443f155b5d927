"""Any text-only causal LM (the degenerate case: no images; e.g. Qwen3, Llama, Mistral).

The "processor" is the tokenizer itself. Messages whose content is a list of typed parts are
flattened to a string (text-only chat templates such as Qwen3's expect string content); an image
part is an error. The chat template already holds any BOS token, so tokenisation adds no special
tokens. Boxes (rare for text-only tasks) are absolute pixels of the original image.
"""

from __future__ import annotations

from dopd_vlm.adapters.base import Adapter, AdapterError


class CausalLMAdapter(Adapter):
    family = "causal_lm"
    box_format = "abs_xyxy"
    model_types = ()  # any model_type in transformers' causal-LM mapping (see get_adapter)
    takes_images = False

    def model_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def load_processor(self, path, trust_remote_code=False):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        if tok.chat_template is None:
            raise AdapterError(f"{path}: the tokenizer has no chat template")
        return tok

    def tokenizer(self, processor):
        return processor

    def normalize_messages(self, messages):
        out = []
        for m in messages:
            content = m["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part["type"] != "text":
                        raise AdapterError(f"text-only model got a {part['type']!r} part in a {m['role']} message")
                    parts.append(part["text"])
                content = "".join(parts)
            out.append({**m, "content": content})
        return out

    def _run_processor(self, processor, texts, images_list):
        if any(images_list):
            raise AdapterError("text-only model got images; drop them or use a VL checkpoint")
        out = processor(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
