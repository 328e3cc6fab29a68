"""The caller's audio decoded on the event loop, as each packet arrives, instead of in a thread.

aiortc's receiver hands every encoded frame to a decoder thread of its own (one
per call) through a thread-safe queue; the thread decodes it and hands each
decoded frame back with `asyncio.run_coroutine_threadsafe`, which wakes the
event loop through its self-pipe and makes a Task, 50 times a second per call.
A profile of four silent calls put 18 % of the server's time in those threads'
wake-ups and most of the rest in the event loop, while decoding itself took 3 %:
an Opus frame decodes in tens of microseconds, far less than the two hops cost.

`LoopDecoder` takes the place of the receiver's queue: `put()` (called by the
receiver on the loop) decodes at once and puts the frames straight on the
track's queue. aiortc's thread still starts, and waits in `get()` until the
receiver stops, when it ends the track as before. Opus is decoded to mono (a
caller's microphone is one voice; aiortc decodes stereo): the resampler to
16 kHz then reads half as much.
"""

from __future__ import annotations

import asyncio
import logging
import queue

import av
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.codecs import get_decoder
from aiortc.codecs.base import Decoder
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from media.caller_dtx import DTX_MAX_BYTES

log = logging.getLogger(__name__)

# The private attributes aiortc keeps them in (name-mangled). Checked at set-up, so an aiortc
# that renames them fails at the first call rather than leaving the thread silently in place.
_QUEUE = "_RTCRtpReceiver__decoder_queue"
_THREAD = "_RTCRtpReceiver__decoder_thread"


class _MonoOpusDecoder(OpusDecoder):
    """aiortc's Opus decoder, asked for one channel instead of two."""

    def __init__(self) -> None:
        super().__init__()
        self.codec.layout = "mono"


def _decoder_for(codec: RTCRtpCodecParameters) -> Decoder:
    return _MonoOpusDecoder() if codec.name.lower() == "opus" else get_decoder(codec)


class LoopDecoder:
    """Stands in for an audio receiver's decoder queue: decodes on `put`, in the caller's thread.

    Frames go to `output` (the remote track's own queue, which the call's inbound pump reads as
    they come: at most one frame per packet, 50 a second). A frame that fails to decode (corrupt
    audio) is dropped with a warning and counted in `failed`, as aiortc's thread drops it; the
    decoder keeps its state, and the next good frame decodes.
    """

    def __init__(self, output: asyncio.Queue) -> None:
        self._output = output
        self._codec_name: str | None = None
        self._decoder: Decoder | None = None
        # aiortc's idle thread waits here; the receiver's stop puts None, which ends it.
        self._stop: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.failed = 0
        # Whether the last packet was a DTX packet: the caller's encoder hears silence and sends
        # next to nothing until it hears more (media.caller_dtx fills the gap).
        self.in_dtx = False

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._stop.put(None)
            return
        codec, encoded_frame = item
        self.in_dtx = len(encoded_frame.data) <= DTX_MAX_BYTES
        if not encoded_frame.data:
            # An empty payload (a sender with nothing to say): FFmpeg would read it as the end of
            # the stream and decode nothing after it.
            return
        if codec.name != self._codec_name or self._decoder is None:
            self._decoder = _decoder_for(codec)
            self._codec_name = codec.name
        try:
            frames = self._decoder.decode(encoded_frame)
        except av.FFmpegError as exc:
            self.failed += 1
            log.warning("inbound %s frame not decoded: %s", codec.name, exc)
            return
        for frame in frames:
            self._output.put_nowait(frame)

    def get(self) -> None:
        """What aiortc's decoder thread waits on: nothing comes but the stop."""
        return self._stop.get()


def decode_on_loop(pc: RTCPeerConnection) -> dict[MediaStreamTrack, LoopDecoder]:
    """Decode every audio receiver's packets on the event loop (see the module's docstring);
    returns each remote audio track's decoder.

    Call it after `setRemoteDescription` (the receivers exist) and before the connection is
    up (aiortc starts each receiver's decoder thread with the queue it holds then).
    """
    return {
        transceiver.receiver.track: _replace(transceiver.receiver)
        for transceiver in pc.getTransceivers() if transceiver.kind == "audio"
    }


def _replace(receiver: RTCRtpReceiver) -> LoopDecoder:
    if not isinstance(getattr(receiver, _QUEUE, None), queue.Queue) or not hasattr(receiver, _THREAD):
        raise RuntimeError("this aiortc keeps no decoder queue where Parley expects it")
    if getattr(receiver, _THREAD) is not None:
        raise RuntimeError("the receiver's decoder thread has started: too late to decode on the loop")
    decoder = LoopDecoder(receiver.track._queue)
    setattr(receiver, _QUEUE, decoder)
    return decoder
