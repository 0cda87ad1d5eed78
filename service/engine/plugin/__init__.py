"""What vLLM loads in its own processes for the in-engine SID search (nothing here imports the gateway).

``register`` is a ``vllm.general_plugins`` entry point (pyproject.toml), so vLLM calls it in the engine-core
and worker processes it spawns; the gateway calls it too before building the engine config. The model classes
are registered by module path, so importing them (and vLLM's model code) happens only where they are used.
"""

from __future__ import annotations


def register() -> None:
    from vllm import ModelRegistry

    from service.engine.plugin.architectures import ARCHITECTURES

    for name in ARCHITECTURES.values():
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, f"service.engine.plugin.model:{name}")
