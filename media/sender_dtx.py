"""DTX on the sending side: which frames of a quiet Opus stream go out, as libopus sends them.

An Opus encoder in DTX (discontinuous transmission, RFC 7587 `usedtx=1`) that
hears only silence goes on sending ordinary frames for 200 ms (its hangover),
then one frame of its TOC byte alone every 400 ms and nothing between: the far
end's decoder reads the TOC byte as "the sender is quiet" and plays silence
until the next packet, whatever its timestamp (libopus's
NB_SPEECH_FRAMES_BEFORE_DTX and MAX_CONSECUTIVE_DTX). A quiet stream then costs
both ends 2.5 packets a second instead of 50.

`QuietSchedule` says, frame by frame (by pts), which of that shape a frame of
silence takes, and how long a sender may sleep before the next one goes out.
"""

from __future__ import annotations

import enum

# libopus: ordinary frames for this many frames of silence, then a TOC byte alone every EVERY_FRAMES.
HANGOVER_FRAMES = 10
EVERY_FRAMES = 20


class Quiet(enum.Enum):
    """What a frame of silence goes out as."""

    SILENCE = "silence"  # an ordinary packet of silence (the hangover)
    DTX = "dtx"  # the TOC byte alone
    NOTHING = "nothing"  # no packet


def dtx_payload(silence: bytes) -> bytes:
    """The DTX packet of a stream whose silence encodes to `silence`: its TOC byte alone, which
    RFC 6716 reads as one frame of no data (the decoder conceals it: silence after silence)."""
    return silence[:1]


class QuietSchedule:
    """Which frames of a sender's silence go out, by pts (samples at `frame_samples` a frame).

    `speech(pts)` marks a frame of speech; `quiet(pts)` says what a frame of silence goes out as,
    `payload` what it sends. A stream that begins quiet starts with the hangover too, as libopus
    does (it counts its silence from the first frame).
    """

    def __init__(self, frame_samples: int) -> None:
        self.frame_samples = frame_samples
        self._quiet_since: int | None = None  # pts of the first frame of the silence under way
        self._hangover_end = 0  # pts of the first frame past its hangover
        self._next_dtx = 0  # pts of the next DTX packet, once past the hangover

    def speech(self, pts: int) -> None:
        self._begin_quiet(pts + self.frame_samples)

    def quiet_frames(self, pts: int) -> int | None:
        """Frames of silence before `pts` since the silence began (None: none counted yet)."""
        return None if self._quiet_since is None else (pts - self._quiet_since) // self.frame_samples

    def quiet(self, pts: int) -> Quiet:
        if self._quiet_since is None:
            self._begin_quiet(pts)  # the stream begins quiet
        if pts < self._next_dtx:
            return Quiet.SILENCE if pts < self._hangover_end else Quiet.NOTHING
        self._next_dtx = pts + EVERY_FRAMES * self.frame_samples
        return Quiet.DTX

    def payload(self, pts: int, silence: bytes) -> bytes | None:
        """What a frame of silence at `pts` sends, for a stream whose silence encodes to `silence`:
        that, its DTX packet, or nothing (None)."""
        quiet = self.quiet(pts)
        if quiet is Quiet.NOTHING:
            return None
        return dtx_payload(silence) if quiet is Quiet.DTX else silence

    def next_sent(self, pts: int) -> int:
        """The pts of the next frame that goes out if nothing is said from `pts` on."""
        if self._quiet_since is None or pts < self._hangover_end:
            return pts
        return max(pts, self._next_dtx)

    def _begin_quiet(self, pts: int) -> None:
        self._quiet_since = pts
        self._hangover_end = self._next_dtx = pts + HANGOVER_FRAMES * self.frame_samples
