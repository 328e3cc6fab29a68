"""Audio in and out: WebRTC tracks, PCM frames, resampling, audio files. Knows nothing of words."""
