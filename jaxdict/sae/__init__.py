"""SAE maths: configs, parameter pytrees, forward passes and losses. No I/O, no optimiser."""
from jaxdict.sae.config import ARCHITECTURES, ConfigError, SAEConfig
from jaxdict.sae.forward import ForwardOutput, forward
from jaxdict.sae.params import SAEParams, fold_input_scale, init_params

__all__ = ["ARCHITECTURES", "ConfigError", "SAEConfig", "ForwardOutput", "forward", "SAEParams",
           "fold_input_scale", "init_params"]
