"""gradalign engine: rollout trees, ideal and distillation gradients, alignment records and reports.

Importing this package is cheap; submodules load torch and transformers when used. The service
(`gradalign_server`) and the offline `gradalign analyze` command both drive
:class:`gradalign_engine.pipeline.Engine`.
"""

__version__ = "0.1.0"
