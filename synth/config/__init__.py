"""Structured configs: each component owns its dataclass; this module registers them with Hydra.

The dataclasses live next to the code they configure (`synth.render.config.RenderConfig`, ...) and
validate themselves in `__post_init__`; this module and `synth.cli` are the only users of Hydra.
"""

from hydra.core.config_store import ConfigStore

_registered = False


def register_configs() -> None:
    """Store the top-level schemas; YAML files in `synth/conf/` extend them through their defaults list."""
    global _registered
    if _registered:
        return
    from synth.analysis.anthropometry_config import AnthropometryConfig
    from synth.build.config import BuildModelConfig
    from synth.fitting.config import AnalyzeConfig, FitConfig
    from synth.pipeline.config import GenerateConfig

    cs = ConfigStore.instance()
    cs.store(name="build_model_schema", node=BuildModelConfig)
    cs.store(name="generate_schema", node=GenerateConfig)
    cs.store(name="fit_schema", node=FitConfig)
    cs.store(name="analyze_schema", node=AnalyzeConfig)
    cs.store(name="anthropometry_schema", node=AnthropometryConfig)
    _registered = True
