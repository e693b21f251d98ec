"""Typed run configuration: ``schema.py`` (the dataclasses, allowed values) and ``loader.py``
(YAML files and key=value overrides merged and checked)."""

from .loader import (CONFIG_DIR, DEFAULT_CONFIG, all_keys, available_configs, config_defaults, field_docs,
                     load_config, load_run_config, resolve_config_path, to_yaml, validate)
from .schema import (CHOICES, LATENT_NEEDS_VOLUME, CameraConfig, ClipConfig, Config, ExportConfig,
                     FieldConfig, GaussianConfig, GaussianOptimConfig, GuidanceConfig, HashGridConfig, LossConfig,
                     OptimConfig, PerpNegConfig, PriorConfig, RenderConfig, StableDiffusionConfig, TriplaneConfig,
                     VSDConfig)

__all__ = ["Config", "FieldConfig", "HashGridConfig", "TriplaneConfig", "GaussianConfig", "CameraConfig",
           "RenderConfig", "GuidanceConfig", "PriorConfig", "ClipConfig", "PerpNegConfig", "VSDConfig", "OptimConfig", "GaussianOptimConfig",
           "LossConfig", "ExportConfig", "CHOICES", "LATENT_NEEDS_VOLUME", "CONFIG_DIR",
           "DEFAULT_CONFIG", "load_config", "load_run_config", "config_defaults", "validate", "to_yaml", "all_keys",
           "field_docs", "available_configs", "resolve_config_path", "StableDiffusionConfig"]
