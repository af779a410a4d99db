"""A synthetic corpus that only copying can predict: random words with a repeated span.

Every document is ``length`` words drawn uniformly from a vocabulary of pseudo-words, in which
one span of ``span_min``..``span_max`` words then appears a second time (overwriting the words
after it, strictly after the first copy). Inside the second copy, every word after the first
follows from the previous token and the first copy (ambiguously where the previous token occurs
more than once earlier, which a larger vocabulary makes rare). Induction (a previous-token
head, then an induction head; Olsson et al. 2022) solves this at any distance between the
copies; when the distance varies little, copying from fixed offsets solves it too, and that is
what a 2-layer GPT-2 learned on short documents (README, Ground truth).

With ``skip_probability`` p > 0, before the span is copied, each word from the third on is
replaced with probability p by f(the word two back), f a fixed random map of the vocabulary.
Those words are predictable (at rate about p) by a previous-token head alone, which makes that
head worth learning before the copying that builds on it; without them, outside the second
copy no word can be predicted better than chance (1/n_words). Each document comes with the
mask of the second copy's predictable positions, so that the accuracy on them is measured
exactly.

Everything is drawn from one seeded ``numpy`` generator, so a seed fixes the corpus.
"""

from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, Int

from interaction_basis.config import InductionCorpusConfig

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


class InductionCorpus(NamedTuple):
    """Documents as word indices, and where their words are predictable by induction.

    Attributes:
        words: the vocabulary (pseudo-words, distinct).
        ids: (document, word) indices into ``words``.
        repeat: (document, word) True at the second copy's words after its first: the
            positions whose word the first copy determines.
    """

    words: list[str]
    ids: Int[np.ndarray, "document word"]
    repeat: Bool[np.ndarray, "document word"]

    def texts(self) -> list[str]:
        """The documents as space-separated words."""
        vocab = np.asarray(self.words)
        return [" ".join(vocab[row]) for row in self.ids]


def make_words(n_words: int, rng: np.random.Generator) -> list[str]:
    """``n_words`` distinct consonant-vowel-consonant-vowel pseudo-words ("bako", "tine")."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    pairs = rng.choice(len(syllables) ** 2, size=n_words, replace=False)
    return [syllables[p // len(syllables)] + syllables[p % len(syllables)] for p in pairs]


def make_induction_corpus(cfg: InductionCorpusConfig) -> InductionCorpus:
    """Training documents then held-out ones (``cfg.n_documents + cfg.n_held_out`` rows)."""
    rng = np.random.default_rng(cfg.seed)
    words = make_words(cfg.n_words, rng)
    n = cfg.n_documents + cfg.n_held_out
    ids = rng.integers(cfg.n_words, size=(n, cfg.length))
    if cfg.skip_probability:
        skip_map = rng.integers(cfg.n_words, size=cfg.n_words)
        skipped = rng.random((n, cfg.length)) < cfg.skip_probability
        for t in range(2, cfg.length):  # in order: a replaced word can feed a later one
            ids[:, t] = np.where(skipped[:, t], skip_map[ids[:, t - 2]], ids[:, t])
    span = rng.integers(cfg.span_min, cfg.span_max + 1, size=n)
    # First copy at a, second at b >= a + span, both inside the document: draw a, then b.
    first = (rng.random(n) * (cfg.length - 2 * span + 1)).astype(np.int64)
    second = first + span + (rng.random(n) * (cfg.length - 2 * span - first + 1)).astype(np.int64)
    repeat = np.zeros((n, cfg.length), dtype=bool)
    for row in range(n):
        a, b, s = first[row], second[row], span[row]
        ids[row, b : b + s] = ids[row, a : a + s]
        repeat[row, b + 1 : b + s] = True
    return InductionCorpus(words, ids, repeat)
