"""One typed config per stage; a YAML file is a serialised config (``winnow.config_io``)."""

from winnow.config.base import ModelOptions, ramp
from winnow.config.refine import RefineConfig
from winnow.config.run import ARMS, RunConfig
from winnow.config.stages import BASELINES, EvalConfig, TrainConfig, WeighConfig

__all__ = ["ARMS", "BASELINES", "EvalConfig", "ModelOptions", "RefineConfig", "RunConfig", "TrainConfig",
           "WeighConfig", "ramp"]
