"""Semantic-code decoding for UnifiedVoice as one jitted function (reference §5.6).

``generate`` runs the prefill of ``[pad][conds][start_text, text, stop_text][start_mel]`` and then
``lax.while_loop`` decode steps over a preallocated KV cache that grows in a few stages as the sequence does
(:func:`cache_stages`), entirely on device. It reproduces the official
``inference_speech`` -> HF ``generate`` semantics:

* positions: ``start_mel`` at mel position 0; the k-th generated code (k >= 1) is fed at mel position
  k + 1 (position 1 is never used), unlike teacher forcing;
* batches: each ``[conds][text]`` row is left-padded and masked (``generation_prefix``);
* processors, in HF order: repetition penalty -> temperature -> top-k -> top-p. With ``num_beams == 1``
  they act on the raw logits (greedy = argmax, sampling = categorical); with ``num_beams > 1`` on
  ``log_softmax(logits)`` and top-k/top-p keep at least 2 tokens (HF ``_beam_search``). The penalized set
  is every id in HF's ``input_ids``: the fake prefix ids (``1`` and ``start_mel``) and all generated codes;
* beam search: initial beam scores ``[0, -1e9, ...]``, 2 x num_beams candidates per step (top-k, or
  sampled without replacement with ``do_sample``), HF ``BeamSearchScorer`` bookkeeping
  (hypotheses kept per batch row, ``length_penalty``, ``early_stopping=False`` done test, finalize);
* stopping at ``stop_mel`` (then padded with it) or after ``max_new_tokens``.

Extension (not in the release): ``target_tokens`` (B,) > 0 asks for exactly that many codes: the stop
token is masked before N codes and forced at N (applied after the repetition penalty, before the
warpers). This works with the released weights.

Outputs are trimmed on the host by :func:`trim_codes` (cut at the first stop, as infer_v2 does).

The infer_v2 T2S flow with this API (``m = UnifiedVoice(cfg)``, ``v = {"params": params}``; prompt
features (1, T, 1024) with lengths ``[T]``: infer_v2 passes 1024 as every length, i.e. nothing masked)::

    latents = m.apply(v, spk, spk_len, method=UnifiedVoice.speaker_conditioning)             # (1, 32, D)
    emovec = m.apply(v, spk, spk_len, emo, emo_len, alpha, method=UnifiedVoice.merge_emovec)  # (1, D)
    conds = m.apply(v, latents, emovec, method=UnifiedVoice.conditioning_block)               # (1, 34, D)
    out = generate(m, params, conds, text_ids, decode=DecodeConfig(), rng=jax.random.PRNGKey(seed))
    codes = trim_codes(out)[0][None]                                                          # (1, m)
    latent = m.apply(v, conds, text_ids, None, codes, None, return_logits=False,
                     method=UnifiedVoice.teacher_forced)["latent"]                           # (1, m, D) for S2M
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from indextts2_jax.errors import ConfigError
from indextts2_jax.models.gpt import UnifiedVoice
from indextts2_jax.nn.gpt2 import init_kv_cache

NEG_INF = -jnp.inf
# The KV cache grows in stages (see :func:`cache_stages`): the first holds the prefix and this many codes, each
# next one twice as many, the last the whole budget.
FIRST_STAGE_CODES = 128


def cache_stages(prefix_len: int, max_new_tokens: int, first_codes: int = FIRST_STAGE_CODES) -> list[int]:
    """The KV-cache lengths the decode loop grows through, shortest first; the last holds the whole budget.

    A decode step's attention reads every slot of its cache, written or not (the mask hides the empty ones), so
    one cache sized for ``max_new_tokens`` (infer_v2's 1500) makes every step read ~1500 slots even when 100
    codes are spoken: with beam 3 at official sizes that is 1.2 GB per step beside 1.9 GB of weights. Instead
    the loop runs on a cache of ``prefix_len + 1 + first_codes`` slots, then copies the cache once into one
    twice as long, and so on (:func:`_staged_loop`): a step reads at most ~2x the slots it needs. Each stage
    is its own ``while_loop`` in the one program (a few copies of the step body to compile).

    Slots needed: the prefix, the start code and ``max_new_tokens - 1`` fed codes. ``first_codes`` 0: one stage.
    """
    full = prefix_len + max_new_tokens
    if first_codes <= 0:
        return [full]
    stages, codes = [], first_codes
    while True:
        length = prefix_len + 1 + codes
        if length >= full:
            break
        stages.append(length)
        codes *= 2
    return stages + [full]


def _grow(state: dict, length: int) -> dict:
    """The state with its caches (B, H, T, hd), ``key_valid`` (B, T) and, in beam search, ``ancestry``
    (G, K, T) padded to ``length`` slots (a new slot's ancestry: the row itself, until it is written)."""
    pad = length - state["key_valid"].shape[1]
    caches = jax.tree.map(lambda c: jnp.pad(c, ((0, 0), (0, 0), (0, pad), (0, 0))), state["caches"])
    state = dict(state, caches=caches, key_valid=jnp.pad(state["key_valid"], ((0, 0), (0, pad))))
    if "ancestry" in state:
        g, k, _ = state["ancestry"].shape
        state["ancestry"] = jnp.concatenate([state["ancestry"], _own_rows(g, k, pad)], axis=2)
    return state


def _own_rows(groups: int, beams: int, slots: int) -> jax.Array:
    """(groups, beams, slots) int32 ancestry where every beam's slots are in its own row."""
    return jnp.broadcast_to(jnp.arange(beams, dtype=jnp.int32)[None, :, None], (groups, beams, slots))


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings; defaults are infer_v2's (beam 3 with sampling)."""

    max_new_tokens: int = 1500
    do_sample: bool = True
    num_beams: int = 3
    temperature: float = 0.8
    top_k: int = 30
    top_p: float = 0.8
    repetition_penalty: float = 10.0
    length_penalty: float = 0.0
    return_logits: bool = False  # keep the raw logits (and processed scores) of every step (num_beams == 1)
    # codes the first KV-cache stage holds, each next stage twice as many (:func:`cache_stages`); 0: one cache
    # for the whole budget. Changes no result, only what a step reads.
    cache_stage_codes: int = FIRST_STAGE_CODES

    @classmethod
    def greedy(cls, max_new_tokens: int = 1500, repetition_penalty: float = 1.0, **kw) -> "DecodeConfig":
        return cls(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                   repetition_penalty=repetition_penalty, **kw)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        if self.num_beams < 1:
            raise ConfigError("num_beams must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError("temperature must be > 0 when sampling")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ConfigError("repetition_penalty must be > 0")
        if self.cache_stage_codes < 0:
            raise ConfigError("cache_stage_codes must be >= 0 (0: one KV cache for the whole budget)")


class GenerateOutput(NamedTuple):
    """codes (B, max_new_tokens) int32 padded with stop_mel; lengths (B,) codes before the first stop;
    steps () decoding steps run; logits/scores (max_new_tokens, B, V) raw / processed per step (rows past
    ``steps`` are zero) when ``return_logits``; sequence_scores (B,) the HF beam score (beam search)."""

    codes: jax.Array
    lengths: jax.Array
    steps: jax.Array
    logits: jax.Array | None = None
    scores: jax.Array | None = None
    sequence_scores: jax.Array | None = None


# ---------------------------------------------------------------------------------------------
# logits processors (HF semantics)
# ---------------------------------------------------------------------------------------------
def apply_repetition_penalty(scores: jax.Array, seen: jax.Array, penalty) -> jax.Array:
    """For ids in ``seen`` (B, V) bool: score < 0 -> score * penalty, else score / penalty."""
    penalized = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, penalized, scores)


def apply_top_k(scores: jax.Array, top_k: int, min_tokens_to_keep: int = 1) -> jax.Array:
    """Keep the scores >= the k-th largest (k = max(top_k, min_keep), capped at V); others -inf."""
    if top_k <= 0:
        return scores
    k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
    # the min of the k largest, not ``[..., -1:]``: XLA:CPU runs a top_k as its TopK kernel only when all k
    # values are used (a sort followed by a slice from 0); reading the last one alone sorts all V (~1.5 ms)
    kth = jnp.min(lax.top_k(scores, k)[0], axis=-1, keepdims=True)
    return jnp.where(scores < kth, NEG_INF, scores)


def top_candidates(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k(scores, k)`` (values, indices; (..., k) each) for callers that read them column by column.

    Without the barrier XLA folds such column reads into the top-k's own slice, and XLA:CPU then sorts the
    whole row instead of running its TopK kernel (which it does only when the k columns are read as one):
    for beam search's (1, 3 x 8194) candidates 4.0 ms per step against 0.05 ms."""
    return lax.optimization_barrier(lax.top_k(scores, k))


def apply_top_p(scores: jax.Array, top_p: float, min_tokens_to_keep: int = 1, candidates: int = 0) -> jax.Array:
    """HF TopP: sort ascending, drop tokens whose cumulative probability is <= 1 - top_p, keep the
    ``min_tokens_to_keep`` most likely. scores (B, V).

    ``candidates`` > 0 says that at most that many scores per row are finite (top-k ran first): the sort and
    the cumulative sum then run over the ``candidates`` largest only (the -inf rest has probability 0 and is
    removed either way), instead of sorting all V (8194 codes: ~2 ms per beam step on a CPU). Ties at the
    top-k threshold can leave more finite scores than that; such a call takes the full sort."""
    v = scores.shape[-1]
    rows = jnp.arange(scores.shape[0])[:, None]

    def remove_among(values, ids):
        """values (B, M) ascending (ties: lower id first, as a stable argsort), ids (B, M) their columns."""
        cum = jnp.cumsum(jax.nn.softmax(values, axis=-1), axis=-1)
        m = values.shape[-1]
        remove_sorted = (cum <= (1.0 - top_p)) & (jnp.arange(m) < m - min_tokens_to_keep)
        remove = jnp.zeros(scores.shape, bool).at[rows, ids].set(remove_sorted)
        return jnp.where(remove, NEG_INF, scores)

    def full(scores):
        order = jnp.argsort(scores, axis=-1)  # ascending, stable
        return remove_among(jnp.take_along_axis(scores, order, axis=-1), order)

    if candidates <= 0 or candidates >= v:
        return full(scores)

    def few(scores):
        values, ids = lax.top_k(scores, candidates)
        values, ids = lax.sort((values, ids), dimension=-1, num_keys=2)  # ascending by value, then by id
        return remove_among(values, ids)

    fits = jnp.all(jnp.sum(jnp.isfinite(scores), axis=-1) <= candidates)
    return lax.cond(fits, few, full, scores)


def apply_exact_count(scores: jax.Array, step: jax.Array, target_tokens: jax.Array | None, stop: int) -> jax.Array:
    """Exact-count mode: rows with target N > 0 cannot stop before N codes and must stop at code N."""
    if target_tokens is None:
        return scores
    is_stop = jnp.arange(scores.shape[-1])[None, :] == stop
    active = (target_tokens > 0)[:, None]
    early = active & (step < target_tokens)[:, None] & is_stop
    forced = active & (step == target_tokens)[:, None]
    scores = jnp.where(early, NEG_INF, scores)
    return jnp.where(forced, jnp.where(is_stop, 0.0, NEG_INF), scores)


class _Static(NamedTuple):
    """The settings that shape the compiled program (the float knobs are traced, see ``_knobs``)."""

    max_new_tokens: int
    do_sample: bool
    num_beams: int
    top_k: int
    use_top_p: bool
    return_logits: bool
    cache_stage_codes: int


def _split(decode: DecodeConfig) -> tuple[_Static, dict]:
    static = _Static(decode.max_new_tokens, decode.do_sample, decode.num_beams, decode.top_k,
                     decode.do_sample and decode.top_p < 1.0, decode.return_logits, decode.cache_stage_codes)
    knobs = {name: jnp.float32(getattr(decode, name))
             for name in ("temperature", "top_p", "repetition_penalty", "length_penalty")}
    return static, knobs


def process_scores(scores, seen, step, target_tokens, static: _Static, knobs: dict, stop: int, min_keep: int):
    """repetition penalty -> exact count -> (sampling only) temperature -> top-k -> top-p.

    A penalty of 1 and a temperature of 1 are exact no-ops, so they are applied unconditionally.
    """
    scores = apply_repetition_penalty(scores, seen, knobs["repetition_penalty"])
    scores = apply_exact_count(scores, step, target_tokens, stop)
    if static.do_sample:
        scores = scores / knobs["temperature"]
        scores = apply_top_k(scores, static.top_k, min_keep)
        if static.use_top_p:
            candidates = min(max(static.top_k, min_keep), scores.shape[-1]) if static.top_k > 0 else 0
            scores = apply_top_p(scores, knobs["top_p"], min_keep, candidates)
    return scores


# ---------------------------------------------------------------------------------------------
# model plumbing
# ---------------------------------------------------------------------------------------------
class _Runner:
    """Prefill and one-token decode steps of a UnifiedVoice over a KV cache; the prefill makes it with
    ``cache_len`` slots, a step works on the cache it is given (its length is the cache stage's)."""

    def __init__(self, model: UnifiedVoice, params, prefix_len: int, cache_len: int):
        self.model, self.params = model, params
        self.prefix_len, self.cache_len = prefix_len, cache_len

    def call(self, method, *args):
        return self.model.apply({"params": self.params}, *args, method=method)

    def prefill(self, prefix: jax.Array, prefix_mask: jax.Array):
        """prefix (B, S, D), mask (B, S) -> logits (B, V) of the start_mel step, caches, key_valid (B, T)."""
        cfg = self.model.config
        b, s, _ = prefix.shape
        start = self.call(UnifiedVoice.embed_mel, jnp.full((b, 1), cfg.start_mel_token, jnp.int32),
                          jnp.zeros((b, 1), jnp.int32))
        x = jnp.concatenate([prefix, start.astype(prefix.dtype)], axis=1)
        key_pos = jnp.arange(self.cache_len)
        key_valid = (key_pos[None, :] < s) & jnp.pad(prefix_mask, ((0, 0), (0, self.cache_len - s)))
        key_valid = key_valid | (key_pos[None, :] == s)
        causal = key_pos[None, :] <= jnp.arange(s + 1)[:, None]  # (S+1, T)
        mask = causal[None, None] & key_valid[:, None, None, :]
        caches = init_kv_cache(b, self.cache_len, cfg.layers, cfg.heads, cfg.head_dim, self.model.dtype)
        hidden, caches = self.call(UnifiedVoice.transformer, x, mask, caches, 0)
        logits = self.call(UnifiedVoice.mel_logits, hidden[:, -1:])[:, 0]
        return logits, caches, key_valid

    def step(self, caches, key_valid: jax.Array, tokens: jax.Array, index: jax.Array, ancestry=None):
        """Feed generated code number ``index`` (0-based) of every row; it sits at mel position index + 2 and is
        written to cache slot ``prefix_len + 1 + index``. ``ancestry`` (G, K, T): beam search's (``nn/gpt2.py``)."""
        b = tokens.shape[0]
        slot = self.prefix_len + 1 + index
        emb = self.call(UnifiedVoice.embed_mel, tokens[:, None].astype(jnp.int32),
                        jnp.full((b, 1), index + 2, jnp.int32))
        key_valid = key_valid | (jnp.arange(key_valid.shape[1])[None, :] == slot)
        hidden, caches = self.call(UnifiedVoice.transformer, emb, key_valid[:, None, None, :], caches, slot, ancestry)
        logits = self.call(UnifiedVoice.mel_logits, hidden)[:, 0]
        return logits, caches, key_valid


def _initial_seen(batch: int, vocab: int, start_mel: int) -> jax.Array:
    """HF input_ids of the official prompt are [1] * S + [start_mel]: both ids start penalized."""
    seen = jnp.zeros((batch, vocab), bool)
    return seen.at[:, 1].set(True).at[:, start_mel].set(True)


def _lengths(codes: jax.Array, stop: int) -> jax.Array:
    is_stop = codes == stop
    return jnp.where(is_stop.any(axis=1), jnp.argmax(is_stop, axis=1), codes.shape[1]).astype(jnp.int32)


def _staged_loop(runner: _Runner, stages: list[int], n: int, running, body, state: dict) -> dict:
    """``while step < n and running(state): state = body(state)``, over the cache stages: the loop of a stage of
    T slots runs while the next code's slot (``prefix_len + step``) fits, then the cache grows to the next.

    The growth copies run even when decoding has stopped early (a few hundred MB at official sizes, once per
    generation): putting the later stages under a ``lax.cond`` skipped them but made XLA:CPU copy the
    loop-carried caches inside those stages (beam 3, 500 codes: 54.3 -> 56.9 s; benchmarks/NOTES.md)."""
    for i, length in enumerate(stages):
        if i:
            state = _grow(state, length)
        limit = min(n, length - runner.prefix_len)
        state = lax.while_loop(lambda st, limit=limit: (st["step"] < limit) & running(st), body, state)
    return state


# ---------------------------------------------------------------------------------------------
# greedy / sampling
# ---------------------------------------------------------------------------------------------
def _decode_single(runner: _Runner, decode: _Static, knobs, logits0, caches, key_valid, rng, target_tokens,
                   stages: list[int]):
    cfg = runner.model.config
    stop, n = cfg.stop_mel_token, decode.max_new_tokens
    b, v = logits0.shape

    def select(logits, seen, step):
        scores = process_scores(logits, seen, step, target_tokens, decode, knobs, stop, 1)
        if decode.do_sample:
            token = jax.random.categorical(jax.random.fold_in(rng, step), scores, axis=-1)
        else:
            token = jnp.argmax(scores, axis=-1)
        return token.astype(jnp.int32), scores

    def record(state, logits, step):
        token, scores = select(logits, state["seen"], step)
        token = jnp.where(state["finished"], stop, token)
        state = dict(state)
        state["codes"] = lax.dynamic_update_slice(state["codes"], token[:, None], (0, step))
        state["finished"] = state["finished"] | (token == stop)
        state["seen"] = state["seen"] | (jnp.arange(v)[None, :] == token[:, None])
        state["last"] = token
        if decode.return_logits:
            state["logits"] = lax.dynamic_update_slice(state["logits"], logits[None], (step, 0, 0))
            state["scores"] = lax.dynamic_update_slice(state["scores"], scores[None], (step, 0, 0))
        state["step"] = step + 1
        return state

    state = {
        "codes": jnp.full((b, n), stop, jnp.int32),
        "finished": jnp.zeros((b,), bool),
        "seen": _initial_seen(b, v, cfg.start_mel_token),
        "last": jnp.zeros((b,), jnp.int32),
        "caches": caches,
        "key_valid": key_valid,
        "step": jnp.int32(0),
    }
    if decode.return_logits:
        state["logits"] = jnp.zeros((n, b, v), jnp.float32)
        state["scores"] = jnp.zeros((n, b, v), jnp.float32)
    state = record(state, logits0, jnp.int32(0))

    def body(state):
        step = state["step"]
        logits, caches, key_valid = runner.step(state["caches"], state["key_valid"], state["last"], step - 1)
        state = dict(state, caches=caches, key_valid=key_valid)
        return record(state, logits, step)

    state = _staged_loop(runner, stages, n, lambda st: ~jnp.all(st["finished"]), body, state)
    return GenerateOutput(
        codes=state["codes"], lengths=_lengths(state["codes"], stop), steps=state["step"],
        logits=state.get("logits"), scores=state.get("scores"),
    )


# ---------------------------------------------------------------------------------------------
# beam search (HF BeamSearchScorer semantics)
# ---------------------------------------------------------------------------------------------
def _hyp_add(h: dict, accept_if: jax.Array, seq: jax.Array, ntok: jax.Array, sum_logprobs: jax.Array,
             gen_len: jax.Array, length_penalty: float, num_beams: int) -> dict:
    """BeamHypotheses.add for every batch row where ``accept_if``: keep the best ``num_beams`` by score.

    h: scores (B, K), seqs (B, K, N), ntok (B, K), stamp (B, K) insertion order, count (B,), clock (B,).
    A full list replaces its worst entry (lowest score, earliest inserted on ties) if the new one is better.
    """
    score = sum_logprobs / (gen_len.astype(jnp.float32) ** length_penalty)
    valid = jnp.arange(num_beams)[None, :] < h["count"][:, None]
    masked = jnp.where(valid, h["scores"], jnp.inf)
    worst = jnp.min(masked, axis=1)
    full = h["count"] >= num_beams
    accept = accept_if & (~full | (score > worst))
    # slot to write: the next free one, or the worst (min score, then min stamp)
    is_min = masked == worst[:, None]
    stamp_key = jnp.where(is_min, h["stamp"], jnp.iinfo(jnp.int32).max)
    worst_slot = jnp.argmin(stamp_key, axis=1)
    slot = jnp.where(full, worst_slot, h["count"])
    write = accept[:, None] & (jnp.arange(num_beams)[None, :] == slot[:, None])  # (B, K)
    return {
        "scores": jnp.where(write, score[:, None], h["scores"]),
        "seqs": jnp.where(write[:, :, None], seq[:, None, :], h["seqs"]),
        "ntok": jnp.where(write, ntok[:, None], h["ntok"]),
        "stamp": jnp.where(write, h["clock"][:, None], h["stamp"]),
        "count": h["count"] + (accept & ~full),
        "clock": h["clock"] + accept,
    }


def _hyp_worst(h: dict, num_beams: int) -> jax.Array:
    valid = jnp.arange(num_beams)[None, :] < h["count"][:, None]
    return jnp.min(jnp.where(valid, h["scores"], jnp.inf), axis=1)


def _decode_beam(runner: _Runner, decode: _Static, knobs, logits0, caches, key_valid, rng, target_tokens,
                 stages: list[int]):
    cfg = runner.model.config
    stop, n, k_beams = cfg.stop_mel_token, decode.max_new_tokens, decode.num_beams
    b, v = logits0.shape
    bk = b * k_beams
    lp = knobs["length_penalty"]

    def expand(x):
        return jnp.repeat(x, k_beams, axis=0)

    logits0 = expand(logits0)
    caches = jax.tree.map(expand, caches)
    key_valid = expand(key_valid)
    # The cache rows stay where they are written (no reorder per step): ancestry[g, k, t] is the row of group g
    # that holds slot t of the beam now in row k (nn/gpt2.py); the shared prefix is the same in every row.
    ancestry = _own_rows(b, k_beams, key_valid.shape[1])
    targets_bk = None if target_tokens is None else expand(target_tokens)

    def process(state, logits, step):
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        proc = process_scores(logp, state["seen"], step, targets_bk, decode, knobs, stop, 2)
        total = (proc + state["beam_scores"].reshape(bk, 1)).reshape(b, k_beams * v)
        n_cand = 2 * k_beams
        if decode.do_sample:
            noise = jax.random.gumbel(jax.random.fold_in(rng, step), total.shape)
            picked = lax.top_k(jax.nn.log_softmax(total, axis=-1) + noise, n_cand)[1]
            cand_scores = jnp.take_along_axis(total, picked, axis=1)
            order = jnp.argsort(-cand_scores, axis=1, stable=True)
            cand_scores = jnp.take_along_axis(cand_scores, order, axis=1)
            picked = jnp.take_along_axis(picked, order, axis=1)
        else:
            cand_scores, picked = top_candidates(total, n_cand)
        cand_beam, cand_tok = picked // v, picked % v

        done = state["done"]
        hyps = state["hyps"]
        filled = jnp.zeros((b,), jnp.int32)
        next_scores = jnp.zeros((b, k_beams), jnp.float32)
        next_tok = jnp.full((b, k_beams), stop, jnp.int32)
        next_src = jnp.zeros((b, k_beams), jnp.int32)
        rows = jnp.arange(b)
        for r in range(n_cand):
            tok, sc, src = cand_tok[:, r], cand_scores[:, r], cand_beam[:, r]
            active = ~done & (filled < k_beams)
            is_eos = tok == stop
            if r < k_beams:
                seq = state["seqs"][rows, src]  # (B, N): the beam's codes so far, stop-padded
                hyps = _hyp_add(hyps, active & is_eos, seq, jnp.full((b,), step, jnp.int32), sc,
                                jnp.full((b,), step + 1, jnp.int32), lp, k_beams)
            to_beam = active & ~is_eos
            put = to_beam[:, None] & (jnp.arange(k_beams)[None, :] == filled[:, None])
            next_scores = jnp.where(put, sc[:, None], next_scores)
            next_tok = jnp.where(put, tok[:, None], next_tok)
            next_src = jnp.where(put, src[:, None], next_src)
            filled = filled + to_beam
        best_possible = cand_scores[:, 0] / (jnp.float32(step + 1) ** lp)
        newly_done = (hyps["count"] >= k_beams) & (_hyp_worst(hyps, k_beams) >= best_possible)
        if target_tokens is not None:  # exact-count rows are complete once the stop was forced
            newly_done |= (target_tokens > 0) & (step >= target_tokens)
        done_after = done | newly_done
        # rows already done feed pad tokens from beam 0 with score 0
        next_scores = jnp.where(done[:, None], 0.0, next_scores)
        next_tok = jnp.where(done[:, None], stop, next_tok)
        next_src = jnp.where(done[:, None], 0, next_src)

        src_global = (rows[:, None] * k_beams + next_src).reshape(bk)
        seqs = state["seqs"][rows[:, None], next_src]  # (B, K, N)
        seqs = lax.dynamic_update_slice(seqs, next_tok[:, :, None], (0, 0, step))
        tok_flat = next_tok.reshape(bk)
        seen = state["seen"][src_global] | (jnp.arange(v)[None, :] == tok_flat[:, None])
        # the new beams' histories: their sources' ancestry; the next step writes each beam's slot in its own row
        ancestry = jnp.take_along_axis(state["ancestry"], next_src[:, :, None], axis=1)
        slots = jnp.arange(ancestry.shape[2])[None, None, :]
        ancestry = jnp.where(slots == runner.prefix_len + 1 + step, _own_rows(b, k_beams, 1), ancestry)
        return dict(state, beam_scores=next_scores, seqs=seqs, seen=seen, ancestry=ancestry, last=tok_flat,
                    hyps=hyps, done=done_after, step=step + 1)

    hyps = {
        "scores": jnp.full((b, k_beams), -jnp.inf, jnp.float32),
        "seqs": jnp.full((b, k_beams, n), stop, jnp.int32),
        "ntok": jnp.zeros((b, k_beams), jnp.int32),
        "stamp": jnp.zeros((b, k_beams), jnp.int32),
        "count": jnp.zeros((b,), jnp.int32),
        "clock": jnp.zeros((b,), jnp.int32),
    }
    beam_scores = jnp.where(jnp.arange(k_beams)[None, :] == 0, 0.0, -1e9) * jnp.ones((b, 1), jnp.float32)
    state = {
        "beam_scores": beam_scores,
        "seqs": jnp.full((b, k_beams, n), stop, jnp.int32),
        "seen": _initial_seen(bk, v, cfg.start_mel_token),
        "caches": caches,
        "key_valid": key_valid,
        "ancestry": ancestry,
        "last": jnp.zeros((bk,), jnp.int32),
        "hyps": hyps,
        "done": jnp.zeros((b,), bool),
        "step": jnp.int32(0),
    }
    state = process(state, logits0, jnp.int32(0))

    def body(state):
        step = state["step"]
        logits, caches, kv = runner.step(state["caches"], state["key_valid"], state["last"], step - 1,
                                         state["ancestry"])
        return process(dict(state, caches=caches, key_valid=kv), logits, step)

    state = _staged_loop(runner, stages, n, lambda st: ~jnp.all(st["done"]), body, state)

    # finalize: rows not done add their running beams (in beam order) as hypotheses
    hyps = state["hyps"]
    steps = state["step"]
    for k in range(k_beams):
        hyps = _hyp_add(hyps, ~state["done"], state["seqs"][:, k], jnp.full((b,), steps, jnp.int32),
                        state["beam_scores"][:, k], jnp.full((b,), steps, jnp.int32), lp, k_beams)
    valid = jnp.arange(k_beams)[None, :] < hyps["count"][:, None]
    masked = jnp.where(valid, hyps["scores"], -jnp.inf)
    best_score = jnp.max(masked, axis=1)
    # python's stable sort + pop(): among equal scores the latest inserted wins
    tie_key = jnp.where(masked == best_score[:, None], hyps["stamp"], -1)
    best = jnp.argmax(tie_key, axis=1)
    rows = jnp.arange(b)
    codes = hyps["seqs"][rows, best]
    ntok = hyps["ntok"][rows, best]
    codes = jnp.where(jnp.arange(n)[None, :] < ntok[:, None], codes, stop)
    return GenerateOutput(codes=codes, lengths=ntok, steps=steps, sequence_scores=best_score)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def _generate(model: UnifiedVoice, decode: _Static, knobs, params, conds, text_ids, text_lengths, rng,
              target_tokens):
    prefix, prefix_mask = model.apply({"params": params}, conds, text_ids, text_lengths,
                                      method=UnifiedVoice.generation_prefix)
    s = prefix.shape[1]
    stages = cache_stages(s, decode.max_new_tokens, decode.cache_stage_codes)
    runner = _Runner(model, params, s, stages[0])
    logits0, caches, key_valid = runner.prefill(prefix, prefix_mask)
    if decode.num_beams == 1:
        return _decode_single(runner, decode, knobs, logits0, caches, key_valid, rng, target_tokens, stages)
    return _decode_beam(runner, decode, knobs, logits0, caches, key_valid, rng, target_tokens, stages)


_generate_jit = jax.jit(_generate, static_argnums=(0, 1))


def generate(model: UnifiedVoice, params, conds: jax.Array, text_ids: jax.Array, text_lengths: jax.Array | None = None,
             *, decode: DecodeConfig = DecodeConfig(), rng: jax.Array | None = None,
             target_tokens: jax.Array | None = None) -> GenerateOutput:
    """Generate semantic codes (one jitted call: prefill + ``lax.while_loop``).

    conds (B, 34, D) from ``UnifiedVoice.conditioning_block``; text_ids (B, L) BPE ids without start/stop
    (ids equal to start/stop and entries at/after ``text_lengths`` are dropped, as officially);
    ``rng`` (a PRNG key) is required when ``decode.do_sample``; ``target_tokens`` (B,) int > 0 = exact
    code count per row (0 = free). Recompiles per (B, L, decode settings).
    """
    decode.validate()
    cfg = model.config
    if decode.max_new_tokens + 1 >= cfg.mel_positions:
        raise ConfigError(f"max_new_tokens {decode.max_new_tokens} needs mel positions up to "
                          f"{decode.max_new_tokens + 1}; the table has {cfg.mel_positions}")
    if decode.return_logits and decode.num_beams > 1:
        raise ConfigError("return_logits is only kept for num_beams == 1")
    if decode.do_sample and rng is None:
        raise ConfigError("sampling needs a PRNG key: generate(..., rng=jax.random.key(seed))")
    if rng is None:
        rng = jax.random.PRNGKey(0)
    text_ids = jnp.asarray(text_ids)
    b, length = text_ids.shape
    # always arrays, so that calls with and without them share one compiled program
    text_lengths = jnp.full((b,), length, jnp.int32) if text_lengths is None else jnp.asarray(text_lengths, jnp.int32)
    target_tokens = jnp.zeros((b,), jnp.int32) if target_tokens is None else jnp.asarray(target_tokens, jnp.int32)
    static, knobs = _split(decode)
    return _generate_jit(model, static, knobs, params, conds, text_ids, text_lengths, rng, target_tokens)


def trim_codes(output: GenerateOutput) -> list[np.ndarray]:
    """Per row, the codes before the first stop token (what infer_v2 passes on)."""
    codes, lengths = np.asarray(output.codes), np.asarray(output.lengths)
    return [codes[i, : lengths[i]] for i in range(codes.shape[0])]
