import math

import numpy as np

from media.frames import FrameSlicer, frames_of, level_dbfs


def test_slicer_cuts_uneven_chunks_into_exact_20ms_frames_with_running_pts():
    slicer = FrameSlicer(16000, 20)
    pcm = np.arange(1000, dtype=np.int16).tobytes()
    frames = [*slicer.push(pcm[:333]), *slicer.push(pcm[333:1500]), *slicer.push(pcm[1500:])]
    assert [f.samples for f in frames] == [320, 320, 320]
    assert [f.pts for f in frames] == [0, 320, 640]
    assert b"".join(f.pcm for f in frames) == pcm[: 960 * 2]
    (last,) = slicer.flush()
    assert last.samples == 320 and last.pts == 960
    assert last.array()[:40].tolist() == list(range(960, 1000))
    assert not last.array()[40:].any()


def test_frames_of_pads_the_tail_and_reports_durations():
    frames = frames_of(bytes(2 * 700), 16000, 20)
    assert len(frames) == 3 and all(f.duration_ms == 20 for f in frames)


def test_level_dbfs():
    assert level_dbfs(bytes(640)) == -math.inf
    full = np.full(320, 32767, dtype=np.int16)
    assert abs(level_dbfs(full.tobytes())) < 0.01
    assert abs(level_dbfs((full // 10).tobytes()) + 20) < 0.1
    # An array of any shape, as PyAV gives a frame: (channels, samples), here interleaved stereo.
    assert abs(level_dbfs((full // 10).reshape(1, -1)) + 20) < 0.1
