"""Text-to-emotion: the official QwenEmotion step (reference §7) on our Qwen3 port (``models/qwen3.py``).

An HF Qwen3 causal-LM folder (the official ``qwen0.6bemo4-merge/``: config.json, tokenizer.json,
tokenizer_config.json with the chat template, generation_config.json, model.safetensors or a sharded
``model.safetensors.index.json``) reads a text and answers with JSON scores of eight Chinese emotion
labels; :func:`parse_emotion_reply` turns the answer into the 8 weights of ``emotion_vector``
(order ``pipeline.EMOTIONS``: happy, angry, sad, afraid, disgusted, melancholic, surprised, calm).

The prompt is the folder's chat template rendered (jinja2, as HF does) with the system message
``文本情感分类`` ("text emotion classification"), the text as the user message, the generation prompt and
``enable_thinking=False``. Decoding follows the folder's generation config (Qwen3 ships sampling:
temperature 0.6, top-k 20, top-p 0.95; a missing config or ``greedy=True`` decodes greedily), seeded, and
stops at an eos id of that config or after ``max_new_tokens`` (default 256; the official asks for up to
32768, but the answer is ~60-100 tokens of JSON). The whole generation is one jitted program per prompt
bucket (prompt lengths padded to powers of two from 32).

Parsing (as the official ``QwenEmotion.inference``): everything up to the last ``</think>`` token is
dropped, the rest decoded without special tokens and read as JSON (else ``label: number`` pairs by regex);
a bare label or an ``emotion``/``label``-style field (Chinese or English names) becomes a one-hot; if the
input text contains a melancholy word (低落, melancholy, melancholic, depression, depressed, gloomy) the
sad and melancholic scores swap; scores clamp to [0, 1.2]; all zero gives calm = 1. One deliberate
difference: the official swaps before the label normalisation, so a bare "sad" label with a melancholy
word ends all zero (calm); here the label becomes a one-hot first and then swaps to melancholic.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.errors import ConfigError, IndexTTS2Error, ModelDirectoryError
from indextts2_jax.infer.generate import apply_repetition_penalty, apply_top_k, apply_top_p
from indextts2_jax.models import qwen3

SYSTEM_PROMPT = "文本情感分类"
LABELS = ("高兴", "愤怒", "悲伤", "恐惧", "反感", "低落", "惊讶", "自然")  # the answer's keys, in vector order
ENGLISH = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")
MELANCHOLIC_WORDS = ("低落", "melancholy", "melancholic", "depression", "depressed", "gloomy")
LABEL_FIELDS = ("emotion", "emotion_label", "label", "情感", "情绪")
MAX_SCORE = 1.2
_PAIR = re.compile(r'([^\s":.,]+?)"?\s*:\s*([\d.]+)')


class EmotionTextError(IndexTTS2Error, ValueError):
    """The emotion model's answer has a score that is not a number."""


def _label(value) -> str | None:
    """A Chinese label or its English name -> the Chinese label; else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if value in LABELS:
        return value
    low = value.lower()
    return LABELS[ENGLISH.index(low)] if low in ENGLISH else None


def _normalize(content) -> dict:
    """Any parsed answer -> a dict with score entries under the Chinese labels (one-hot for bare labels)."""
    normalized = dict(content) if isinstance(content, dict) else {}
    found = _label(content) if isinstance(content, str) else None
    if found is None:
        for field in LABEL_FIELDS:
            found = _label(normalized.get(field))
            if found is not None:
                break
    if found is not None and not any(k in normalized for k in LABELS):
        normalized[found] = 1.0
    for key in LABELS:  # a label as a value, e.g. {"高兴": "sad"}
        found = _label(normalized.get(key))
        if found is not None:
            normalized[key] = 1.0 if found == key else 0.0
            if found != key:
                normalized[found] = 1.0
    return normalized


def _score(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise EmotionTextError(f"the emotion model answered a non-numeric score {value!r}; retry with another "
                               "seed or pass emotion_vector") from e
    if math.isnan(value):
        raise EmotionTextError("the emotion model answered a NaN score")
    return max(0.0, min(MAX_SCORE, value))


def parse_emotion_reply(reply: str, text: str) -> dict[str, float]:
    """The model's answer (after ``</think>``) for ``text`` -> {english name: score} in vector order."""
    try:
        content = json.loads(reply)
    except json.JSONDecodeError:
        content = {m.group(1): float(m.group(2)) for m in _PAIR.finditer(reply) if _is_number(m.group(2))}
    content = _normalize(content)
    if any(word in text.lower() for word in MELANCHOLIC_WORDS):
        content["悲伤"], content["低落"] = content.get("低落", 0.0), content.get("悲伤", 0.0)
    scores = {en: _score(content.get(cn, 0.0)) for cn, en in zip(LABELS, ENGLISH)}
    if all(v <= 0.0 for v in scores.values()):
        scores["calm"] = 1.0
    return scores


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


@dataclasses.dataclass
class EmotionTextResult:
    """scores: {english name: weight} in vector order; vector: the same as a list; reply: the decoded answer;
    tokens: generated token count; finished: an eos id ended it (False: cut at max_new_tokens); seconds;
    cached: the answer came from the model's cache of recent (text, seed) pairs."""

    scores: dict[str, float]
    reply: str
    tokens: int
    finished: bool
    seconds: float
    cached: bool = False

    @property
    def vector(self) -> list[float]:
        return list(self.scores.values())


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """The folder's generation_config.json fields that decoding uses (HF defaults when absent)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf(cls, gen: Mapping[str, Any], eos_fallback: tuple[int, ...]) -> SamplingConfig:
        eos = gen.get("eos_token_id")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos])) if eos is not None else eos_fallback
        return cls(do_sample=bool(gen.get("do_sample", False)), temperature=float(gen.get("temperature") or 1.0),
                   top_k=int(gen.get("top_k") if gen.get("top_k") is not None else 50),
                   top_p=float(gen.get("top_p") if gen.get("top_p") is not None else 1.0),
                   repetition_penalty=float(gen.get("repetition_penalty") or 1.0), eos_ids=eos_ids)


def _read_json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise ModelDirectoryError(f"emotion model folder {path.parent}: {path.name} is missing")
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelDirectoryError(f"cannot read {path}: {e}") from e


def load_qwen3_weights(folder: Path) -> dict[str, np.ndarray]:
    """model.safetensors, or the shards that model.safetensors.index.json lists -> {HF key: array}."""
    from indextts2_jax.convert.state_dict import load_safetensors

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_safetensors(single)
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        if not shards:
            raise ModelDirectoryError(f"{index}: empty weight_map")
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            if not (folder / shard).is_file():
                raise ModelDirectoryError(f"{index} lists {shard}, which is missing")
            state.update(load_safetensors(folder / shard))
        return state
    raise ModelDirectoryError(f"emotion model folder {folder}: no model.safetensors or model.safetensors.index.json")


def render_chat_prompt(template: str, text: str) -> str:
    """The chat template (jinja2, in a sandbox as HF renders it) for [system, user=text] with the generation
    prompt and ``enable_thinking=False``."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                                enable_thinking=False, tools=None)
    except TemplateError as e:
        raise ModelDirectoryError(f"the emotion model's chat template failed: {e}") from e


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def generate_ids(model: qwen3.Qwen3LM, params, ids, length, sampling: SamplingConfig, max_new: int, rng):
    """One jitted generation: prefill of the padded prompt, then up to ``max_new`` one-token steps on the KV cache
    (a ``while_loop`` that ends at an eos id of ``sampling``).

    ids (1, P) int32 (the prompt, padded at its end), length () int32 (its true length) -> tokens (max_new,) int32
    (zeros after the last), count () int32, finished () bool (an eos id ended it; it is the last token).
    """
    p = ids.shape[1]
    vocab = model.config.vocab_size
    cache = model.init_cache(1, p + max_new)
    logits, cache = model.apply({"params": params}, ids, cache, 0, logits_at=length[None] - 1)
    eos = jnp.asarray(sampling.eos_ids or (-1,), jnp.int32)
    seen = jnp.zeros((1, vocab), jnp.int32).at[0, ids[0]].max((jnp.arange(p) < length).astype(jnp.int32)) > 0

    def pick(logits, seen, step):
        scores = logits
        if sampling.repetition_penalty != 1.0:
            scores = apply_repetition_penalty(scores, seen, sampling.repetition_penalty)
        if not sampling.do_sample:
            return jnp.argmax(scores, axis=-1).astype(jnp.int32)
        scores = scores / sampling.temperature
        scores = apply_top_k(scores, sampling.top_k)
        if sampling.top_p < 1.0:
            scores = apply_top_p(scores, sampling.top_p, candidates=sampling.top_k)
        return jax.random.categorical(jax.random.fold_in(rng, step), scores, axis=-1).astype(jnp.int32)

    def cond(state):
        step, _, _, _, done, _ = state
        return (step < max_new) & ~done

    def body(state):
        step, logits, cache, seen, _, out = state
        token = pick(logits, seen, step)
        out = out.at[step].set(token[0])
        done = jnp.any(token[0] == eos)
        logits, cache = model.apply({"params": params}, token[:, None], cache, length + step)
        return step + 1, logits[:, 0], cache, seen.at[0, token[0]].set(True), done, out

    state = (jnp.int32(0), logits, cache, seen, jnp.bool_(False), jnp.zeros((max_new,), jnp.int32))
    step, _, _, _, done, out = jax.lax.while_loop(cond, body, state)
    return out, step, done


class QwenEmotion:
    """Text -> 8 emotion weights with a Qwen3 emotion model folder (module docstring).

    ``QwenEmotion(folder, dtype=jnp.float32, max_new_tokens=256, max_text_chars=2000, cache_size=256)``;
    ``__call__(text, seed=0, greedy=False)`` -> :class:`EmotionTextResult`. Params are converted once at
    construction (float32 by default: 0.6 B params are 2.4 GB; ``dtype=jnp.bfloat16`` halves it). The answers
    to the last ``cache_size`` (text, seed, greedy) calls are kept: the same call again runs no model.
    """

    def __init__(self, folder, dtype=jnp.float32, max_new_tokens: int = 256, max_text_chars: int = 2000,
                 cache_size: int = 256):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ModelDirectoryError(f"emotion model folder not found: {self.folder}")
        self.config = qwen3.Qwen3Config.from_hf(_read_json(self.folder / "config.json"))
        tok_file = self.folder / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelDirectoryError(f"emotion model folder {self.folder}: tokenizer.json is missing")
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        tok_cfg = _read_json(self.folder / "tokenizer_config.json", required=False)
        template = tok_cfg.get("chat_template")
        if not template and (self.folder / "chat_template.jinja").is_file():
            template = (self.folder / "chat_template.jinja").read_text(encoding="utf-8")
        if not isinstance(template, str) or not template:
            raise ModelDirectoryError(f"emotion model folder {self.folder}: no chat template (tokenizer_config.json "
                                      "chat_template or chat_template.jinja)")
        self.template = template
        eos_token = tok_cfg.get("eos_token")
        eos_token = eos_token.get("content") if isinstance(eos_token, dict) else eos_token
        fallback = tuple(i for i in [self.tokenizer.token_to_id(eos_token)] if eos_token and i is not None)
        self.sampling = SamplingConfig.from_hf(_read_json(self.folder / "generation_config.json", required=False),
                                               fallback)
        self.think_end = self.tokenizer.token_to_id("</think>")
        self.max_new_tokens = int(max_new_tokens)
        self.max_text_chars = int(max_text_chars)
        self.cache_size = int(cache_size)
        self.dtype = dtype
        self.model = qwen3.Qwen3LM(self.config, dtype=dtype, param_dtype=dtype)
        self._answers: collections.OrderedDict = collections.OrderedDict()  # (text, seed, greedy, max new) -> result
        self.params = jax.tree_util.tree_map(
            jnp.asarray, qwen3.from_hf(load_qwen3_weights(self.folder), self.config, dtype=np.dtype(dtype)))

    # -- tokens ---------------------------------------------------------------------------------
    def prompt_ids(self, text: str) -> list[int]:
        """The chat prompt's token ids for ``text`` (special tokens as written in the template)."""
        return self.tokenizer.encode(render_chat_prompt(self.template, text), add_special_tokens=False).ids

    def reply_text(self, ids) -> str:
        """Generated ids -> the answer after the last ``</think>``, without special tokens."""
        ids = [int(i) for i in ids]
        if self.think_end is not None and self.think_end in ids:
            ids = ids[len(ids) - ids[::-1].index(self.think_end):]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, text: str, seed: int = 0, greedy: bool = False) -> tuple[list[int], bool]:
        """Generated ids for ``text`` (the eos id included when one ended it) and whether an eos ended it."""
        ids = self.prompt_ids(text)
        limit = self.config.max_position_embeddings - self.max_new_tokens
        if len(ids) > limit:
            raise ConfigError(f"emotion text: {len(ids)} prompt tokens, the model takes at most {limit}")
        bucket = max(32, 1 << (len(ids) - 1).bit_length())
        padded = np.zeros((1, bucket), np.int32)
        padded[0, : len(ids)] = ids
        sampling = dataclasses.replace(self.sampling, do_sample=False) if greedy else self.sampling
        out, count, done = generate_ids(self.model, self.params, jnp.asarray(padded), jnp.int32(len(ids)), sampling,
                                        self.max_new_tokens, jax.random.PRNGKey(int(seed)))
        return np.asarray(out)[: int(count)].tolist(), bool(done)

    def __call__(self, text: str, seed: int = 0, greedy: bool = False) -> EmotionTextResult:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("emotion text is empty: give the text whose emotion the model should read")
        if len(text) > self.max_text_chars:
            raise ConfigError(f"emotion text has {len(text)} characters; at most {self.max_text_chars} "
                              "(pass a shorter emotion_text)")
        key = (text, int(seed), bool(greedy), self.max_new_tokens)
        if key in self._answers:  # decoding is deterministic given the seed: the same answer, no model call
            self._answers.move_to_end(key)
            hit = self._answers[key]
            return dataclasses.replace(hit, scores=dict(hit.scores), seconds=0.0, cached=True)
        t0 = time.perf_counter()
        tokens, finished = self.generate(text, seed=seed, greedy=greedy)
        reply = self.reply_text(tokens)
        result = EmotionTextResult(parse_emotion_reply(reply, text), reply, len(tokens), finished,
                                   time.perf_counter() - t0)
        self._answers[key] = result
        while len(self._answers) > self.cache_size:
            self._answers.popitem(last=False)
        return result
