"""Make ``tests/data/qwen3_tiny/``: a tiny random Qwen3 causal LM folder in the HF layout, and what HF
transformers computes with it (the reference for ``tests/parity/test_qwen3.py``).

QwenEmotion (the official text-to-emotion model, reference §7) is an HF Qwen3 folder run by
``transformers.AutoModelForCausalLM``; the shared fixtures have no case for it, so this script makes one.
It needs torch and transformers (not our dependencies); run it in a venv that has them, e.g. the official
IndexTTS2 one::

    /path/to/venv/bin/python tests/data/make_qwen3_fixture.py tests/data/qwen3_tiny

Folder: config.json, model.safetensors (float32), generation_config.json, tokenizer.json (a byte-level BPE
trained here on a few sentences, with Qwen's special tokens), tokenizer_config.json (our own short chat
template in Qwen3's format). reference.npz: the chat prompt's ids as ``apply_chat_template`` renders them
(``enable_thinking=False``), the prefill logits of the prompt, and ``generate``'s greedy continuation.
reference.json: the rendered prompt text and the config.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Qwen3's chat format, written for this test: system and user turns, then the assistant turn; with
# enable_thinking false the assistant turn opens with an empty think block.
CHAT_TEMPLATE = (
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
CORPUS = ["文本情感分类", "今天天气真好，我很高兴！", "I am so happy today.", "{\"高兴\": 0.9, \"愤怒\": 0.0}",
          "The sky is grey and I feel gloomy.", "悲伤 低落 恐惧 反感 惊讶 自然", "0123456789.,:{}\" "]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "model_max_length": 512}, ensure_ascii=False, indent=1))

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                      rope_theta=1_000_000.0, tie_word_embeddings=True, max_position_embeddings=512,
                      bos_token_id=ids["<|endoftext|>"], eos_token_id=None)
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains (the init sets them to 1)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    gen = GenerationConfig(do_sample=True, temperature=0.6, top_k=20, top_p=0.95,
                           eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"])
    gen.save_pretrained(out)

    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>")
    hf_tok.chat_template = CHAT_TEMPLATE
    messages = [{"role": "system", "content": "文本情感分类"}, {"role": "user", "content": "今天天气真好，我很高兴！"}]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    prompt = hf_tok([text], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(prompt).logits[0].numpy()
        model.generation_config.eos_token_id = None  # the reference run never stops: 24 greedy tokens
        greedy = model.generate(prompt, do_sample=False, max_new_tokens=24, attention_mask=torch.ones_like(prompt),
                                pad_token_id=ids["<|endoftext|>"])[0, prompt.shape[1]:].numpy()
    np.savez(out / "reference.npz", prompt_ids=prompt[0].numpy().astype(np.int32), logits=logits.astype(np.float32),
             greedy_ids=greedy.astype(np.int32))
    (out / "reference.json").write_text(json.dumps({
        "reference": "transformers.Qwen3ForCausalLM (what QwenEmotion runs), float32, CPU",
        "transformers": __import__("transformers").__version__, "torch": torch.__version__,
        "prompt_text": text, "messages": messages, "special_ids": ids,
        "notes": "greedy_ids: generate(do_sample=False, max_new_tokens=24) after the prompt with no eos id set "
                 "(the run has 24 tokens whatever the random weights pick); generation_config.json, written "
                 "separately, has Qwen3's sampling defaults and the eos ids"},
        ensure_ascii=False, indent=1))
    print("wrote", out, "vocab", vocab, "prompt", prompt.shape[1], "tokens")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "qwen3_tiny"))
