"""Built-in backends. Each module is an ordinary plugin registered by entry point."""
