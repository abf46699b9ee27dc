"""Tracking with divisions on synthetic movies with a known answer (drifting cells, divisions,
two cells touching, a detection missing from one frame): every true track one id, every
division's parent right, scored with traccuracy (TRA, division F1) on the files we write."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_hq.engine.tracking.ctc import ctc_tracks, iter_write_ctc, tracks_layer_data
from napari_sam_hq.engine.tracking.linking import Tracks, TrackSettings, iter_link
from napari_sam_hq.model.steps import exhaust

from ..movies import cell_movie


def _ours_by_truth(movie, tracks: Tracks) -> dict[int, set[int]]:
    """For each true track, the set of our track ids over its frames (its detections)."""
    out: dict[int, set[int]] = {}
    for t in range(len(movie.truth)):
        for true_id in (int(i) for i in np.unique(movie.truth[t]) if i):
            det = np.unique(movie.detections[t][movie.truth[t] == true_id])
            det = [int(d) for d in det if d]
            if det:
                out.setdefault(true_id, set()).add(tracks.ids[(t, det[0])])
    return out


@pytest.fixture(scope="module", params=[0, 1, 2])
def linked(request):
    movie = cell_movie(30, (160, 160), cells=6, divisions=2, seed=request.param)
    return movie, exhaust(iter_link(movie.detections, TrackSettings()))


def test_every_true_track_is_one_id_and_every_division_has_its_parent(linked):
    movie, tracks = linked
    ours = _ours_by_truth(movie, tracks)
    assert all(len(ids) == 1 for ids in ours.values()), ours  # one id each, across the missing frame too
    mine = {true: ids.pop() for true, ids in ours.items()}
    assert len(set(mine.values())) == len(mine)  # and no two true tracks share one
    truth_parents = {lab: p for lab, _, _, p in movie.tracks if p}
    assert {mine[c]: mine[p] for c, p in truth_parents.items()} == tracks.parents
    assert all(len(d) == 2 for d in tracks.divisions.values())


def test_traccuracy_scores_tra_and_division_f1(linked, tmp_path):
    import tifffile
    from traccuracy import run_metrics
    from traccuracy.loaders import load_ctc_data
    from traccuracy.matchers import CTCMatcher
    from traccuracy.metrics import CTCMetrics, DivisionMetrics

    movie, tracks = linked
    exhaust(iter_write_ctc(tmp_path / "pred", movie.detections, tracks))
    gt = tmp_path / "gt"
    gt.mkdir()
    for t, frame in enumerate(movie.truth):
        tifffile.imwrite(gt / f"man_track{t:03d}.tif", frame)
    (gt / "man_track.txt").write_text("".join(f"{a} {b} {c} {d}\n" for a, b, c, d in movie.tracks))
    results, _ = run_metrics(
        gt_data=load_ctc_data(str(gt), str(gt / "man_track.txt"), name="truth"),
        pred_data=load_ctc_data(str(tmp_path / "pred" / "ctc"), str(tmp_path / "pred" / "ctc" / "res_track.txt"),
                                name="ours"),
        matcher=CTCMatcher(), metrics=[CTCMetrics(), DivisionMetrics()],
    )
    scores = {r["metric"]["name"]: r["results"] for r in results}
    tra = scores["CTCMetrics"]["TRA"]
    f1 = scores["DivisionMetrics"]["Frame Buffer 0"]["Division F1"]
    print(f"TRA {tra:.4f}, division F1 {f1:.3f}")
    assert tra > 0.97 and f1 >= 0.95  # TRA: one detection of the movie is missing


def test_the_files_say_the_same_tracks(linked, tmp_path):
    import tifffile

    movie, tracks = linked
    labels_path, track_path = exhaust(iter_write_ctc(tmp_path, movie.detections, tracks))
    labels = tifffile.imread(labels_path)
    assert labels.shape == movie.truth.shape
    ids, rows = ctc_tracks(tracks)
    assert track_path.read_text().splitlines() == [f"{a} {b} {c} {d}" for a, b, c, d in rows]
    for lab, b, e, _ in rows:  # each CTC track is on every frame from B to E, and on no other
        frames = [t for t in range(len(labels)) if (labels[t] == lab).any()]
        assert frames == list(range(b, e + 1))
    data, graph = tracks_layer_data(tracks)
    assert data.shape[1] == 4 and set(graph) == set(tracks.parents)
    with pytest.raises(FileExistsError, match="--force"):
        exhaust(iter_write_ctc(tmp_path, movie.detections, tracks))
    exhaust(iter_write_ctc(tmp_path, movie.detections, tracks, force=True))


def test_frames_are_read_one_at_a_time():
    """Memory does not grow with the movie: each frame is read once, when it is linked."""
    movie = cell_movie(12, (96, 96), cells=3, divisions=1, seed=4)

    class Lazy:
        shape = movie.detections.shape
        reads: list[int] = []

        def __len__(self):
            return len(movie.detections)

        def __getitem__(self, t):
            self.reads.append(t)
            return movie.detections[t]

    exhaust(iter_link(Lazy(), TrackSettings()))
    assert Lazy.reads == list(range(12))


def test_a_division_is_fixed_with_one_call(linked):
    movie, tracks = linked
    parent, (a, b) = next(iter(tracks.divisions.items()))
    tracks.set_parent(a, None)  # an invented division: gone
    assert tracks.divisions[parent] == [b]
    tracks.set_parent(a, parent)  # a missed one: back
    assert tracks.divisions[parent] == [a, b]
    with pytest.raises(ValueError, match="ends before its daughter"):
        tracks.set_parent(parent, a)


def test_bad_movies_are_refused_in_one_line():
    with pytest.raises(ValueError, match="a 2D image has no time axis"):
        exhaust(iter_link(np.zeros((20, 20), np.uint16)))
    with pytest.raises(ValueError, match="no frame has an object"):
        exhaust(iter_link(np.zeros((3, 20, 20), np.uint16)))
    with pytest.raises(ValueError, match="max_distance must be positive"):
        TrackSettings(max_distance=0)


def test_frames_segmented_by_the_head_then_linked():
    """The movie's images segmented frame by frame (ais with a rule head that finds the bright
    components), then linked: the same divisions as from the true labels."""
    from napari_sam_hq.engine import EmbeddingStore, SegmentationSession
    from napari_sam_hq.engine.tracking.frames import SegmentedFrames

    from ..fake_predictor import FakeModel, FakePredictor
    from ..heads import RuleHead

    movie = cell_movie(16, (128, 128), cells=4, divisions=1, seed=5)
    session = SegmentationSession(FakeModel(), movie.image, store=EmbeddingStore(None, max_in_memory=8),
                                  predictor_factory=FakePredictor)
    frames = SegmentedFrames(session, head=RuleHead(erode=2), mode="ais")  # cores: touching cells apart
    tracks = exhaust(iter_link(frames, TrackSettings()))
    truth = exhaust(iter_link(movie.truth, TrackSettings()))
    assert len(tracks.divisions) == len(truth.divisions) == 1
    assert len(tracks.spans) == len(truth.spans)
    with pytest.raises(ValueError, match="no time axis"):
        SegmentedFrames(SegmentationSession(FakeModel(), movie.image[0], predictor_factory=FakePredictor))


def test_3d_movies_are_linked_by_their_3d_centroids():
    """T x Z x Y x X: each frame a small volume (the 2D frame in three slices); the same tracks
    and divisions as the 2D movie."""
    movie = cell_movie(20, (128, 128), cells=4, divisions=1, seed=6)
    volumes = np.repeat(movie.detections[:, None], 3, axis=1)
    flat = exhaust(iter_link(movie.detections))
    deep = exhaust(iter_link(volumes))
    assert len(deep.spans) == len(flat.spans) and len(deep.divisions) == len(flat.divisions) == 1
    assert all(len(c) == 3 for c in deep.centroids.values())
    with pytest.raises(ValueError, match="T x Y x X or T x Z x Y x X"):
        exhaust(iter_link(np.zeros((2, 2, 2, 8, 8), np.uint16)))
