"""The compact id set behaves as a set of strings (apart from 64-bit digest collisions)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqvision import idset
from zmqvision.idset import IdSet


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=300), st.lists(st.text(max_size=20), max_size=50))
def test_membership_matches_a_python_set(added, probes):
    ids = IdSet()
    reference = set()
    for item in added:
        ids.add(item)
        reference.add(item)
        assert item in ids
    assert len(ids) == len(reference)
    for item in probes:
        assert (item in ids) == (item in reference)


def test_merging_into_the_sorted_array_keeps_everything(monkeypatch):
    monkeypatch.setattr(idset, "_MERGE_EVERY", 64)
    ids = IdSet(f"img{i}" for i in range(1000))
    assert len(ids) == 1000
    assert all(f"img{i}" in ids for i in range(1000))
    assert not any(f"other{i}" in ids for i in range(1000))
    assert ids.nbytes >= 8 * 960  # merged batches live in the array, 8 bytes an id
    arr = ids._sorted
    assert np.all(arr[1:] > arr[:-1])  # sorted, no repeats
    for i in range(1000):  # adding again changes nothing
        ids.add(f"img{i}")
    assert len(ids) == 1000


def test_not_a_string_is_not_a_member():
    ids = IdSet(["a"])
    assert 1 not in ids and None not in ids and b"a" not in ids


def test_memory_is_eight_bytes_an_id():
    ids = IdSet(f"{i:024x}" for i in range(100_000))
    assert len(ids) == 100_000
    assert ids.nbytes <= 8 * 100_000
