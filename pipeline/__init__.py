"""Turns audio frames into words, words into replies, and replies into audio frames.

Knows nothing of WebSockets or HTTP: `signaling` wires these stages into calls.
"""
