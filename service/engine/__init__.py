"""The engine: the only package that imports vLLM (``make lint`` enforces it: pyproject.toml, [tool.importlinter]).

- :mod:`.core`: one ``AsyncLLM`` started and always shut down (:func:`open_engine`), a request streamed
  (:meth:`Engine.generate`), vLLM's errors translated into the service's;
- :mod:`.cpu`: the CPU choices (cores, one process, compile, dtype);
- :mod:`.plugins`: what vLLM loads in each of its processes (the adapter guard, the CPU LoRA op);
- :mod:`.gateway_metrics`: vLLM's Prometheus logger, writing adapter names as clients send them.

Everything outside this package speaks plain values (:class:`AdapterRef`, :class:`GenerationParams`,
:class:`Delta`); they become vLLM's objects here.
"""

from service.engine.core import (
    IMPORT_LOCK,
    AdapterRef,
    Delta,
    Engine,
    EngineSlot,
    GenerationParams,
    cache_salt,
    open_engine,
)

__all__ = ["IMPORT_LOCK", "AdapterRef", "Delta", "Engine", "EngineSlot", "GenerationParams", "cache_salt",
           "open_engine"]
