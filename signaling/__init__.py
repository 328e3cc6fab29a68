"""Sessions and the protocol: the FastAPI app, the WebSocket protocol, setting calls up and tearing them down."""
