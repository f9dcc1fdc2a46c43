"""Use cases: one function or method per thing the CA does, typed request in, typed
result out, no Typer, Rich or os.environ inside; the CLI (and later a server) parse,
call one of these, and render."""
