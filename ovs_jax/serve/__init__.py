"""The web app (`python -m ovs_jax.serve`, docs/serve.md): service.py segments uploads with a model
loaded once, app.py serves it over HTTP (Starlette), static/ holds the page."""
