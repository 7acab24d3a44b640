"""HTTP and WebSocket transports over the data plane (no state, no model logic here)."""
