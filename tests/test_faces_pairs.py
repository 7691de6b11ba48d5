"""MobileFaceNet's batch is fixed at 2: two faces share one inference. Row k of a pair is
bit-identical to the same face embedded alone (paired with a copy of itself), on real
aligned faces, for every pairing tried — the property that lets the reference
(``FaceEmbedder.embed`` pairs a list) and a worker (``worker.stage2.SecondStage`` pairs
two queued crops, a lone one with itself) give the same bytes whichever face a face is
paired with."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def aligned(models_ready):
    """Every face of test_faces_identify's scene (the astronaut planted ten times among
    25 LFW people), found by CenterFace and aligned to 112 × 112 from the image."""
    from tests.test_faces_identify import _scene
    from zmqvision.faces.align import align_many
    from zmqvision.faces.identify import detect_faces
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    image, _, _ = _scene()
    detector = Detector(resolve("centerface"), threads=2)
    dets = detect_faces(image, detector, scales=[detector.input_size])
    assert len(dets) >= 30 and dets.landmarks is not None
    return align_many(image, dets.landmarks)


@pytest.fixture(scope="module", params=[1, 2], ids=["1-thread", "2-threads"])
def embedder(request, models_ready):
    from zmqvision.faces.embed import FaceEmbedder

    return FaceEmbedder(threads=request.param)


def raw_rows(embedder, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The model's two output rows (not normalised) for the pair (a, b)."""
    from zmqvision.openvino_import import import_openvino

    ov = import_openvino()
    pair = np.ascontiguousarray(np.stack([a, b]))
    request = embedder.compiled.create_infer_request()
    request.infer({0: ov.Tensor(pair, list(pair.shape), ov.Type.u8)})
    return request.get_output_tensor(0).data.copy()


def test_a_faces_row_of_a_pair_is_its_row_alone_bit_for_bit(embedder, aligned):
    alone = [raw_rows(embedder, c, c) for c in aligned]
    assert all(r[0].tobytes() == r[1].tobytes() for r in alone)
    n = len(aligned)
    rng = np.random.default_rng(5)
    pairs = list(itertools.combinations(range(n), 2))
    tried = [pairs[i] for i in rng.choice(len(pairs), 40, replace=False)]
    tried += [(i, (i + 1) % n) for i in range(n)]  # every face in both rows
    for i, j in tried:
        got = raw_rows(embedder, aligned[i], aligned[j])
        assert got[0].tobytes() == alone[i][0].tobytes(), (i, j)
        assert got[1].tobytes() == alone[j][0].tobytes(), (i, j)
    # and the pairs are really different faces (not a degenerate model answering alike)
    assert len({r[0].tobytes() for r in alone}) == n


def test_embedding_a_list_equals_each_face_alone(embedder, aligned):
    together = embedder.embed(aligned)
    one_by_one = np.stack([embedder.embed(c[None])[0] for c in aligned])
    assert together.tobytes() == one_by_one.tobytes()
    odd = embedder.embed(aligned[3:8])  # pairs shifted by one, a lone face at the end
    assert odd.tobytes() == one_by_one[3:8].tobytes()
