"""``glm-engine serve``: an OpenAI-compatible HTTP server over the serving core (docs/serving.md#the-server).

``async_engine`` (the core stepped on its own thread, requests in and tokens out through asyncio queues),
``protocol`` (request bodies and OpenAI-style errors), ``handlers`` (chat and text completions, streamed or whole),
``metrics`` (Prometheus), ``app`` (the FastAPI application) and ``run`` (uvicorn, graceful shutdown).
"""
