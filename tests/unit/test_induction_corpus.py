"""The synthetic induction corpus: repeats where the mask says, fixed by the seed."""

import numpy as np
import pytest
from pydantic import ValidationError

from interaction_basis.config import InductionCorpusConfig
from interaction_basis.induction_corpus import make_induction_corpus

CFG = InductionCorpusConfig(n_documents=300, n_held_out=20, length=20, span_min=4, span_max=9)


def _second_copy(mask_row: np.ndarray) -> tuple[int, int]:
    """Start and length of the second copy (its first word is not in the mask)."""
    where = np.flatnonzero(mask_row)
    return int(where[0]) - 1, len(where) + 1


def test_every_document_repeats_a_span_where_the_mask_says():
    corpus = make_induction_corpus(CFG)
    assert corpus.ids.shape == corpus.repeat.shape == (320, 20)
    for ids, mask in zip(corpus.ids, corpus.repeat, strict=True):
        b, span = _second_copy(mask)
        assert CFG.span_min <= span <= CFG.span_max
        assert mask[b + 1 : b + span].all() and mask.sum() == span - 1  # one contiguous run
        copy = ids[b : b + span]
        earlier = [a for a in range(b - span + 1) if np.array_equal(ids[a : a + span], copy)]
        assert earlier, "the second copy has no first copy before it"


def test_texts_are_one_word_per_id():
    corpus = make_induction_corpus(CFG)
    assert len(set(corpus.words)) == CFG.n_words
    texts = corpus.texts()
    assert texts[3].split() == [corpus.words[i] for i in corpus.ids[3]]


def test_the_seed_fixes_the_corpus():
    a, b = make_induction_corpus(CFG), make_induction_corpus(CFG)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.repeat, b.repeat)
    assert a.words == b.words
    c = make_induction_corpus(CFG.model_copy(update={"seed": 1}))
    assert not np.array_equal(a.ids, c.ids)


def test_uniform_words_outside_the_spans():
    """Chance accuracy outside the spans: no word is much more frequent than 1/n_words."""
    corpus = make_induction_corpus(CFG.model_copy(update={"n_documents": 3000}))
    counts = np.bincount(corpus.ids[~corpus.repeat], minlength=CFG.n_words)
    expected = counts.sum() / CFG.n_words
    # Poisson-ish counts of ~800: 6 standard deviations is ~170.
    assert np.abs(counts - expected).max() < 6 * np.sqrt(expected)


@pytest.mark.parametrize(
    "bad, match",
    [({"span_min": 6, "span_max": 5}, "span_min"), ({"length": 10, "span_max": 6}, "length")],
)
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValidationError, match=match):
        InductionCorpusConfig(**bad)
