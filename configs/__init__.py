"""Configuration: pydantic models with every default, YAML presets with deltas."""

from configs.loader import ConfigError, resolve, run_id
from configs.schema import Config

__all__ = ["Config", "ConfigError", "resolve", "run_id"]
