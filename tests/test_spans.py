"""glip_d2.text.spans: the span validator and the phrases of a grounding record."""

import pytest

from glip_d2.text import check_phrase_spans, record_phrase_sets, record_phrases


def test_check_phrase_spans_values_and_errors():
    assert check_phrase_spans("a red car", [[(0, 1)], [[2.0, 9]]]) == [[[0, 1]], [[2, 9]]]
    with pytest.raises(ValueError, match=r"^x: phrase_spans\[1\]: span \[2, 10\] lies outside"):
        check_phrase_spans("a red car", [[[0, 1]], [[2, 10]]], "x")
    with pytest.raises(ValueError, match=r"phrase_spans\[0\]: expected a non-empty list"):
        check_phrase_spans("a red car", [[]])
    with pytest.raises(ValueError, match="non-empty list"):
        check_phrase_spans("a red car", [])
    with pytest.raises(ValueError, match=r"span \[3, 3\] lies outside"):  # empty span
        check_phrase_spans("a red car", [[[3, 3]]])
    with pytest.raises(ValueError, match=r"span \[1, 2, 3\] is not"):
        check_phrase_spans("a red car", [[[1, 2, 3]]])


def test_record_phrases_train_and_eval():
    record = {
        "caption": "the man and the dog",
        "tokens_positive_eval": [[[12, 19]], [[0, 7]]],
    }
    annos = [
        {"tokens_positive": [[0, 7]]},
        {"tokens_positive": [[12, 19]]},
        {"tokens_positive": [[0, 7]]},
        {"tokens_positive": [[12, 15], [16, 19]]},  # overlaps "the dog"
    ]
    phrases, box_phrase = record_phrases(record, annos)
    assert phrases == [[[0, 7]], [[12, 19]], [[12, 15], [16, 19]]]
    assert box_phrase == [0, 1, 0, 2]
    phrases, box_phrase = record_phrases(record, annos, use_eval_phrases=True)
    assert phrases == [[[12, 19]], [[0, 7]]]
    assert box_phrase == [1, 0, 1, 0]
    # The same spans in another order are the same phrase; no overlap at all is an error.
    _, box_phrase = record_phrases(
        {"caption": "a b", "tokens_positive_eval": [[[0, 1], [2, 3]]]},
        [{"tokens_positive": [[2, 3], [0, 1]]}],
        use_eval_phrases=True,
    )
    assert box_phrase == [0]
    with pytest.raises(ValueError, match="match no phrase"):
        record_phrases(
            {"caption": "a b", "tokens_positive_eval": [[[0, 1]]]},
            [{"tokens_positive": [[2, 3]]}],
            use_eval_phrases=True,
        )


def test_record_phrase_sets_give_a_box_every_mention():
    """MDETR's Flickr box of an entity mentioned twice holds both mentions' spans."""
    record = {
        "caption": "a man and a dog; the man",
        "tokens_positive_eval": [[[0, 5]], [[10, 15]], [[17, 24]]],
    }
    annos = [{"tokens_positive": [[0, 5], [17, 24]]}, {"tokens_positive": [[10, 15]]}]
    phrases, sets = record_phrase_sets(record, annos)
    assert phrases == [[[0, 5]], [[10, 15]], [[17, 24]]]
    assert sets == [[0, 2], [1]]
    assert record_phrases(record, annos, use_eval_phrases=True)[1] == [0, 1]  # first only
    # an exact match takes the annotation alone, even when other phrases overlap it
    exact = {"caption": "a b", "tokens_positive_eval": [[[0, 3]], [[0, 1]]]}
    assert record_phrase_sets(exact, [{"tokens_positive": [[0, 1]]}])[1] == [[1]]
