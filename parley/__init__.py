"""Parley: a real-time, fully local voice calling assistant.

This package holds what ties the stages together for a process: settings, the
embedded services (Redis, llama-server) and the `parley` command line.
"""
