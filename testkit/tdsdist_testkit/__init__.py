"""Tiny random-weight models and tokenizers for tdsdist's tests and benchmarks (not in the wheel).

Everything here is built locally from a seed, never downloaded: the test suite and the benchmarks
must run offline, fast, and give the same numbers on every machine. The builders imitate the parts
of real checkpoints that the scorer depends on (a byte-level BPE tokenizer that prepends a BOS
token like Llama, a chat template, a Llama architecture, vocabularies padded past the tokenizer's
length, two models sharing one tokenizer) while staying small enough to run on one CPU thread in
milliseconds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "USER_TOKEN",
    "ASSISTANT_TOKEN",
    "CHAT_TEMPLATE",
    "LOGIT_SCALE",
    "default_corpus",
    "train_tiny_tokenizer",
    "make_tiny_llama",
    "save_tiny_pair",
    "make_big_vocab_model",
    "EPS32",
    "FORWARD_ULPS",
    "float32_tolerance",
    "assert_float32_close",
]

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"

# Llama order, so that <unk>=0, <s>=1, </s>=2 agree with LlamaConfig's default bos/eos ids.
_SPECIAL_TOKENS: tuple[str, ...] = (
    UNK_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    USER_TOKEN,
    ASSISTANT_TOKEN,
)

# A byte-level BPE always holds the 256 byte symbols, plus our special tokens.
_MIN_VOCAB_SIZE = 256 + len(_SPECIAL_TOKENS)

#: Chat format of the tiny tokenizer. It has no BOS of its own: the tokenizer's post-processor adds
#: one when the rendered text is encoded with ``add_special_tokens=True`` (``apply_chat_template``
#: with ``tokenize=True`` encodes with ``add_special_tokens=False``, so it yields no BOS).
#: Assistant turns carry no EOS. Rendering ``[user]`` with the generation prompt gives a prefix of
#: rendering ``[user, assistant]``, so an answer's span is found by length.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'system' -%}"
    "{{ message['content'] + '\\n' }}"
    "{%- else -%}"
    "{{ raise_exception('unsupported chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

#: Weights are drawn from N(0, LOGIT_SCALE / sqrt(hidden_size)). As the final RMSNorm gives the
#: hidden state a unit RMS per coordinate, the logits then have a standard deviation of about
#: LOGIT_SCALE whatever the width: next-token distributions are peaked (top-1 probability mostly
#: 0.15-0.6 on random text) rather than near uniform as with the 0.02 of real initialisations, so
#: a distribution shift between two seeds is large and visible in tests.
LOGIT_SCALE = 3.0
#: Body weights (all but the LM head) are N(0, BODY_STD_SCALE / sqrt(hidden_size)).
BODY_STD_SCALE = 0.5


# ----------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------

_NOUNS = (
    "model token answer question river city garden teacher student window computer language "
    "mountain library engine kitchen network planet doctor music story market letter bridge "
    "forest system paper result method signal pattern village winter morning coffee recipe "
    "memory camera ocean friend number problem solution journey weather castle animal museum"
).split()
_VERBS = (
    "explains builds finds carries watches writes measures answers follows changes opens "
    "describes remembers compares improves shares reads visits teaches learns paints counts"
).split()
_ADJECTIVES = (
    "quick quiet bright ancient simple careful large small green helpful strange modern "
    "gentle heavy famous rare curious honest narrow wide warm cold"
).split()
_ADVERBS = "slowly quickly carefully often rarely happily quietly always never gently".split()
_NAMES = "Alice Bob Carol David Emma Farid Grace Hiro Ines Jonas Kemal Lena Mateo Nadia".split()
_PLACES = (
    "Paris",
    "Kyoto",
    "Lagos",
    "Lima",
    "Oslo",
    "Cairo",
    "Québec",
    "Zürich",
    "Kraków",
    "São Paulo",
    "Reykjavík",
)
_TOPICS = (
    "photosynthesis",
    "gravity",
    "the French Revolution",
    "prime numbers",
    "climate change",
    "sourdough bread",
    "machine learning",
    "the water cycle",
    "jazz music",
    "volcanoes",
    "the immune system",
    "chess openings",
)
_UNICODE_SNIPPETS = (
    "café",
    "naïve",
    "über",
    "crème brûlée",
    "façade",
    "déjà vu",
    "東京",
    "こんにちは",
    "Привет",
    "Ελλάδα",
    "مرحبا",
    "😀",
    "🚀",
    "—",
    "“quoted”",
    "±",
    "€42",
)
_CODE_LINES = (
    "def add(a, b):\n    return a + b",
    "for i in range(10):\n    print(i * i)",
    "if x > 0 and y < 0:\n    swap(x, y)",
    'print("hello, world")',
    "result = [n ** 2 for n in numbers if n % 2 == 0]",
    "SELECT name, age FROM users WHERE age > 30;",
    "const total = items.reduce((s, x) => s + x, 0);",
    '{"key": "value", "count": 3}',
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _sentence(rng: random.Random) -> str:
    adjective, noun = rng.choice(_ADJECTIVES), rng.choice(_NOUNS)
    forms = (
        lambda: f"The {adjective} {noun} {rng.choice(_VERBS)} the {rng.choice(_NOUNS)}.",
        lambda: (
            f"{rng.choice(_NAMES)} {rng.choice(_ADVERBS)} {rng.choice(_VERBS)} "
            f"{_article(adjective)} {adjective} {noun} in {rng.choice(_PLACES)}."
        ),
        lambda: f"Why does the {noun} {rng.choice(_VERBS)[:-1]} so {rng.choice(_ADVERBS)}?",
        lambda: (
            f"In {rng.randint(1800, 2024)}, {rng.randint(2, 999)} people visited the "
            f"{adjective} {noun}, and {rng.randint(1, 99)}% of them liked it."
        ),
        lambda: (
            f"Can you explain {rng.choice(_TOPICS)} to {_article(adjective)} {adjective} "
            f"{rng.choice(_NOUNS)}?"
        ),
        lambda: (
            f"Sure! Here are {rng.randint(2, 5)} facts about {rng.choice(_TOPICS)}: "
            f"1. It {rng.choice(_VERBS)} the {noun}. 2. It is {adjective}."
        ),
        lambda: (
            f"I think the {noun} is {adjective}, but {rng.choice(_NAMES)} says it's "
            f"{rng.choice(_ADJECTIVES)}; we'll see."
        ),
        lambda: (
            f"Note: the {noun} costs ${rng.randint(1, 500)}.{rng.randint(0, 99):02d} "
            f"({rng.choice(_UNICODE_SNIPPETS)})."
        ),
        lambda: rng.choice(_CODE_LINES),
        lambda: (
            f"- {adjective.capitalize()} {noun}s\n- {rng.choice(_ADJECTIVES)} "
            f"{rng.choice(_NOUNS)}s\n- {rng.choice(_UNICODE_SNIPPETS)}"
        ),
    )
    return rng.choice(forms)()


def default_corpus() -> list[str]:
    """Return a few hundred deterministic lines of varied English-like text.

    It is generated from a fixed seed rather than read from a file so that tokenizer training is
    self-contained and identical everywhere. It mixes prose, questions and chat-style answers,
    numbers and prices, lists, code, and some non-Latin script and emoji, so that BPE finds
    plenty of merges and the tests exercise multi-byte characters.
    """
    rng = random.Random(20240531)
    lines = []
    for _ in range(400):
        n_sentences = rng.choice((1, 1, 2, 3))
        lines.append(" ".join(_sentence(rng) for _ in range(n_sentences)))
    return lines


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def _train_bpe(texts: Sequence[str], vocab_size: int, special_tokens: Sequence[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    # ByteLevel pre-tokenizer and decoder: every string maps to byte symbols that are all in
    # the vocabulary, so any text round-trips and <unk> is never produced.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    return tokenizer


def train_tiny_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer that behaves like a Llama tokenizer.

    Byte-level pre-tokenisation means any Unicode text round-trips through encode/decode with no
    unknown tokens, so tests can feed arbitrary answers. Like Llama, encoding with
    ``add_special_tokens=True`` prepends ``<s>`` (and ``False`` adds nothing), which is the
    behaviour the scorer has to handle when it joins prompts and answers. ``<|user|>`` and
    ``<|assistant|>`` are special tokens used by :data:`CHAT_TEMPLATE`.

    The vocabulary has exactly ``vocab_size`` entries, special tokens included, so tests can ask
    for odd sizes (301, 517). When ``texts`` cannot supply enough merges, the remainder is filled
    with unused ``<|reserved_N|>`` special tokens (as Llama 3 does). Training is deterministic
    for the same inputs.

    Raises:
        ValueError: if ``vocab_size`` is smaller than the 256 byte symbols plus 6 special tokens.
    """
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {_MIN_VOCAB_SIZE} (256 bytes + "
            f"{len(_SPECIAL_TOKENS)} special tokens), got {vocab_size}"
        )
    special_tokens = list(_SPECIAL_TOKENS)
    backend = _train_bpe(texts, vocab_size, special_tokens)
    shortfall = vocab_size - backend.get_vocab_size(with_added_tokens=True)
    if shortfall > 0:
        # The corpus ran out of pairs to merge: as the merges learnt do not depend on the
        # target size, retraining with `shortfall` more special tokens lands exactly on it.
        special_tokens += [f"<|reserved_{i}|>" for i in range(shortfall)]
        backend = _train_bpe(texts, vocab_size, special_tokens)
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN}:0 $A:0",
        pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN],
        model_max_length=2048,
        padding_side="right",
        # Otherwise decode() rewrites " ." as "." and " 's" as "'s", breaking round trips.
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    if len(tokenizer) != vocab_size:  # pragma: no cover - guards against library changes
        raise RuntimeError(f"trained {len(tokenizer)} tokens, expected {vocab_size}")
    return tokenizer


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def _init_weights_(model: LlamaForCausalLM, seed: int, std: float) -> None:
    """Overwrite every parameter from a private generator seeded with ``seed``.

    Drawing the weights ourselves, in the fixed order of ``named_parameters``, makes them depend
    on the seed only, not on the global RNG or on how a transformers release initialises Llama.
    Norm weights are ones, as in a freshly initialised Llama.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.startswith("lm_head"):
                param.normal_(0.0, std, generator=generator)
            else:
                # A gentler body keeps float32 rounding of the forward near 1e-6: with every
                # layer at the head's scale, activations grow and a prefix forward differs from
                # the whole-sequence forward by ~1e-5 (BLAS blocks by row count), which is
                # kernel noise, not what the tests compare.
                param.normal_(0.0, BODY_STD_SCALE * std / LOGIT_SCALE, generator=generator)


def _build_llama(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    # fork_rng: the default initialisation inside the constructor draws from the global RNG,
    # which must not shift the random streams of the test that builds the model.
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    _init_weights_(model, seed, config.initializer_range)
    model.to(torch.float32)
    model.eval()
    return model


def make_tiny_llama(
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    intermediate_size: int = 64,
    vocab_size: int | None = None,
    tie_embeddings: bool = False,
    max_position_embeddings: int = 2048,
) -> LlamaForCausalLM:
    """Build a small random Llama for ``tokenizer``, in float32 and eval mode.

    The same ``seed`` always gives the same weights, so two calls make identical models and two
    seeds make a "base" and an "aligned" model that disagree. ``vocab_size`` defaults to
    ``len(tokenizer)``; a larger value adds embedding and LM-head rows no token maps to, as in
    real checkpoints whose vocabulary is padded to a multiple of 64 or 128, so the scorer must
    ignore those logits. The padding rows are random like the others (not zero), so they take
    visible probability mass if the scorer forgets to drop them.

    Weights are N(0, LOGIT_SCALE / sqrt(hidden_size)) (recorded as ``initializer_range``) so the
    next-token distributions are peaked rather than uniform. Attention is ``eager``: on CPU in
    float32 a right-padded batch then gives bit-identical logits to each sequence run alone
    (``sdpa`` differs by up to ~7e-6), so tests can compare batched and single runs exactly.
    The choice is not saved: ``from_pretrained`` picks ``sdpa`` unless told otherwise.
    """
    n_tokens = len(tokenizer)
    if vocab_size is None:
        vocab_size = n_tokens
    if vocab_size < n_tokens:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer ({n_tokens})")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads if num_kv_heads is not None else num_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=LOGIT_SCALE / hidden_size**0.5,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        attn_implementation="eager",
    )
    return _build_llama(config, seed)


def save_tiny_pair(
    root: Path,
    *,
    vocab_size: int = 301,
    seed: int = 0,
    model_vocab_size: int | None = None,
    **model_kwargs: int | bool | None,
) -> tuple[Path, Path]:
    """Write an aligned and a base tiny model sharing one tokenizer; return their folders.

    This is the on-disk layout the scorer reads in production (two Hugging Face checkpoint
    folders with identical vocabularies), built offline in well under a second. The tokenizer
    has ``vocab_size`` tokens and is trained on :func:`default_corpus`. The aligned model uses
    ``seed`` and the base model ``seed + 1``. ``model_vocab_size`` (default: the tokenizer's
    size) pads the models' vocabulary; it is separate from ``vocab_size`` because that name is
    taken by the tokenizer here. Other keyword arguments go to :func:`make_tiny_llama`.

    Returns:
        ``(root / "aligned", root / "base")``, each holding safetensors weights, config,
        generation config and tokenizer files.
    """
    root = Path(root)
    tokenizer = train_tiny_tokenizer(default_corpus(), vocab_size)
    folders = (root / "aligned", root / "base")
    for folder, model_seed in zip(folders, (seed, seed + 1), strict=True):
        model = make_tiny_llama(
            tokenizer,
            seed=model_seed,
            vocab_size=model_vocab_size,
            **model_kwargs,  # type: ignore[arg-type]
        )
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folders


def make_big_vocab_model(
    vocab_size: int = 128256,
    hidden_size: int = 256,
    num_layers: int = 2,
    seed: int = 0,
) -> LlamaForCausalLM:
    """Build a Llama with a Llama-3-sized vocabulary and a tiny body, for memory benchmarks.

    With 128K vocabulary entries, the logits (batch x length x vocab floats) dominate memory,
    as in real models, while the body costs almost nothing: this isolates what the scorer does
    with full-vocabulary distributions. No tokenizer is needed; feed random ids below
    ``vocab_size``. Heads are 64 wide and the MLP is twice the hidden size.
    """
    bos, eos = (128000, 128001) if vocab_size > 128001 else (1, 2)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 64),
        num_key_value_heads=max(1, hidden_size // 64),
        max_position_embeddings=8192,
        initializer_range=LOGIT_SCALE / hidden_size**0.5,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        dtype="float32",
        attn_implementation="eager",
    )
    return _build_llama(config, seed)


# ----------------------------------------------------------------------------------------------
# Tolerances
# ----------------------------------------------------------------------------------------------

#: Machine epsilon of float32.
EPS32 = float(np.finfo(np.float32).eps)
#: How many float32 ulps of its magnitude a quantity computed through a float32 forward may move
#: between runs that are equally right: CPU kernels (Intel and AMD, `ATEN_CPU_CAPABILITY=default`,
#: `avx2`, `avx512` sum in other orders and contract to FMA differently), batch shapes (GEMM
#: blocking), process layouts (a tensor-parallel all-reduce sums the slices in another order).
#: The largest seen: 15 ulps (KL 7.06 off by 1.3e-5, tp=2 on an Intel Xeon); twice that.
FORWARD_ULPS = 32
#: The magnitude below which that error stops shrinking. A log-probability is `logit - lse`
#: and `lse` is of the order of the largest logits whatever the token's probability, so even a
#: log-probability near 0 carries the rounding of numbers of that size (the tiny models' logits
#: stay within about +-8); KL, JS and entropy are sums of such terms.
LOGIT_SCALE_BOUND = 8.0


def float32_tolerance(desired: np.ndarray, scale: float = LOGIT_SCALE_BOUND) -> np.ndarray:
    """`FORWARD_ULPS` ulps of `|desired| + scale`, elementwise."""
    return FORWARD_ULPS * EPS32 * (np.abs(np.asarray(desired, dtype=np.float64)) + scale)


def assert_float32_close(
    actual: np.ndarray, desired: np.ndarray, scale: float = LOGIT_SCALE_BOUND, err_msg: str = ""
) -> None:
    """`actual` equals `desired` to the float32 rounding of a forward pass (`float32_tolerance`):
    relative to the quantity's own magnitude, with `scale` as its floor. Infinities and NaNs
    (a store's unwritten rows) must sit in the same places."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(desired), err_msg=err_msg)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(desired), err_msg=err_msg)
    finite = np.isfinite(desired)
    err = np.abs(actual[finite] - desired[finite])
    tol = float32_tolerance(desired[finite], scale)
    if err.size and not (err <= tol).all():
        worst = int(np.argmax(err - tol))
        raise AssertionError(
            f"{err_msg}: {int((err > tol).sum())} of {err.size} values differ by more than"
            f" {FORWARD_ULPS} float32 ulps of |value| + {scale}; worst: {actual[finite][worst]!r}"
            f" vs {desired[finite][worst]!r} (off by {err[worst]:.3g}, allowed {tol[worst]:.3g})"
        )


PAIR_EXACT = ("top_ids", "rank", "ties")


def assert_pair_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray], scale=8.0) -> None:
    """The pair head's arrays against `logits_pair_reference`: ids, ranks and tie counts exact,
    every float within `assert_float32_close`."""
    assert set(got) == set(want)
    for name, value in want.items():
        if name.rsplit("/", 1)[1] in PAIR_EXACT or name.endswith("rank_of_base_top1"):
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        else:
            assert_float32_close(got[name], value, scale=scale, err_msg=name)


def assert_answers_match(got: dict[str, np.ndarray], answers: Sequence, reference) -> None:
    """A scorer's rows (all answers concatenated, in order) against `reference(answer)`, one
    answer's arrays at a time (`assert_pair_arrays`); every row is accounted for."""
    offset = 0
    for a in answers:
        rows = slice(offset, offset + len(a.answer))
        offset += len(a.answer)
        assert_pair_arrays({k: v[rows] for k, v in got.items()}, reference(a))
    assert offset == len(got["base/rank"])
