"""Tasks built on the engine: passkey retrieval, ask, summarize."""
