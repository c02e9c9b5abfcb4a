"""SGLang: launching servers, the native HTTP protocol, health checks and restarts."""
