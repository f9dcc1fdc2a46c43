"""The CA domain core, shared by the CLI, batch issuance and (later) the server."""
