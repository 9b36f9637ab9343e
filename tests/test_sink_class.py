"""Where a universal pattern sends the images (idls.analysis.sink_class): counted against the records by hand."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from idls.analysis.sink_class import SINK_SHARE, sink_class


def _records(true_labels, predicted, interpreters=("cam",)):
    return [{"image_id": f"img/{i}", "seed": 0, "interpreter": name, "true_label": t, "pred_label": p}
            for name in interpreters for i, (t, p) in enumerate(zip(true_labels, predicted, strict=True))]


def test_the_sink_is_the_most_common_prediction_and_its_own_images_bound_the_fooling_ratio():
    true_labels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    predicted = [2, 2, 2, 2, 2, 2, 2, 2, 2, 4]
    sink = sink_class(_records(true_labels, predicted, interpreters=("cam", "grad")))  # each image counts once
    assert (sink.label, sink.n) == (2, 10)
    assert sink.share == 0.9 and sink.ceiling == 0.8 and sink.is_sink


def test_no_records_no_sink_and_a_spread_prediction_is_no_sink():
    assert sink_class([]) is None
    spread = sink_class(_records([0, 1, 2, 3], [0, 1, 2, 3]))
    assert spread.share == 0.25 < SINK_SHARE and not spread.is_sink


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=40))
def test_shares_are_fractions_and_a_pattern_sending_everything_to_the_sink_meets_its_ceiling(pairs):
    true_labels = [t for t, _ in pairs]
    sink = sink_class(_records(true_labels, [p for _, p in pairs]))
    assert 0 < sink.share <= 1 and 0 <= sink.ceiling <= 1 and sink.n == len(pairs)
    # every image sent to one class c: exactly the images of other classes are fooled, the ceiling itself
    everything = sink_class(_records(true_labels, [sink.label] * len(pairs)))
    fooled = sum(t != sink.label for t in true_labels) / len(pairs)
    assert everything.share == 1 and everything.ceiling == fooled
