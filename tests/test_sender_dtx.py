"""The sending side's DTX schedule, frame by frame: libopus's shape after speech and from the start."""

from media.sender_dtx import EVERY_FRAMES, HANGOVER_FRAMES, Quiet, QuietSchedule, dtx_payload

F = 960  # samples a frame


def shape(schedule: QuietSchedule, frames: range) -> list[Quiet]:
    return [schedule.quiet(i * F) for i in frames]


def test_a_stream_that_begins_quiet_sends_the_hangover_then_a_dtx_packet_every_20_frames():
    schedule = QuietSchedule(F)
    assert schedule.next_sent(0) == 0
    got = shape(schedule, range(0, 60))
    assert got[:HANGOVER_FRAMES] == [Quiet.SILENCE] * HANGOVER_FRAMES
    dtx = [i for i, q in enumerate(got) if q is Quiet.DTX]
    assert dtx == [HANGOVER_FRAMES, HANGOVER_FRAMES + EVERY_FRAMES, HANGOVER_FRAMES + 2 * EVERY_FRAMES]
    assert set(got[HANGOVER_FRAMES:]) == {Quiet.DTX, Quiet.NOTHING}
    # From a frame that sends nothing, the next one sent is the next DTX packet.
    assert schedule.next_sent(51 * F) == (HANGOVER_FRAMES + 3 * EVERY_FRAMES) * F


def test_speech_restarts_the_hangover_and_a_late_frame_still_gets_its_dtx_packet():
    schedule = QuietSchedule(F)
    shape(schedule, range(0, 25))  # quiet: hangover, DTX at 10, nothing since
    schedule.speech(25 * F)
    schedule.speech(26 * F)
    assert schedule.quiet_frames(27 * F) == 0 and schedule.quiet_frames(32 * F) == 5
    got = shape(schedule, range(27, 27 + HANGOVER_FRAMES + 1))
    assert got == [Quiet.SILENCE] * HANGOVER_FRAMES + [Quiet.DTX]
    # The sender slept past the next DTX packet's frame (a late loop): the frame it wakes at sends it.
    next_dtx = schedule.next_sent((27 + HANGOVER_FRAMES + 1) * F)
    assert next_dtx == (27 + HANGOVER_FRAMES + EVERY_FRAMES) * F
    assert schedule.quiet(next_dtx + 2 * F) is Quiet.DTX
    assert schedule.next_sent(next_dtx + 3 * F) == next_dtx + (2 + EVERY_FRAMES) * F


def test_the_payload_is_the_silence_its_toc_byte_or_nothing():
    silence = bytes([0xF8, 0xFF, 0xFE])
    schedule = QuietSchedule(F)
    payloads = [schedule.payload(i * F, silence) for i in range(HANGOVER_FRAMES + 2)]
    assert payloads == [silence] * HANGOVER_FRAMES + [dtx_payload(silence), None]
    assert dtx_payload(silence) == b"\xf8"
