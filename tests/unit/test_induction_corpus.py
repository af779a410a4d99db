"""The synthetic induction corpus: repeats where the mask says, fixed by the seed."""

import numpy as np
import pytest
from pydantic import ValidationError

from interaction_basis.config import InductionCorpusConfig
from interaction_basis.data.induction_corpus import make_induction_corpus

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


def _share_of_the_commonest_word_two_on(corpus) -> float:
    """Over the words outside the second copies, how often the word two positions on is the
    most common one after the same word (1/n_words for independent words)."""
    ids, keep = corpus.ids, ~corpus.repeat
    pairs = [
        (a, b)
        for row, k in zip(ids, keep, strict=True)
        for a, b, ok in zip(row[:-2], row[2:], k[2:], strict=True)
        if ok
    ]
    counts: dict[int, dict[int, int]] = {}
    for a, b in pairs:
        counts.setdefault(a, {}).setdefault(b, 0)
        counts[a][b] += 1
    return sum(max(c.values()) for c in counts.values()) / len(pairs)


def test_the_skip_rule_makes_the_word_two_back_predictive():
    """p = 0.5: about half the words (plus chance) follow from the word two back, through one
    fixed map; p = 0 draws exactly the corpus it did before the rule existed."""
    plain = CFG.model_copy(update={"n_words": 16, "n_documents": 2000})
    skipped = plain.model_copy(update={"skip_probability": 0.5})
    share = _share_of_the_commonest_word_two_on(make_induction_corpus(skipped))
    base = _share_of_the_commonest_word_two_on(make_induction_corpus(plain))
    # Binomial noise over ~30,000 pairs is below 0.01. The copied span overwrites words (and
    # the pairs that reach into it) after the rule ran, which pulls the share below p + chance
    # (0.46 measured); independent words give about 0.07 here.
    assert 0.4 < share < 0.6 and base < 0.15, (share, base)
    again = make_induction_corpus(CFG.model_copy(update={"skip_probability": 0.0}))
    np.testing.assert_array_equal(again.ids, make_induction_corpus(CFG).ids)
