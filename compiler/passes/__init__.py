"""Graph passes: the pass contract and runner, and the target-independent rewrites."""

from tessera.compiler.passes.fuse_act import fuse_elementwise
from tessera.compiler.passes.pipeline import PASSES, Pass, get_pass, register, run_pipeline
from tessera.compiler.passes.rewrite import (
    GRAPH_PASSES,
    dce,
    fold_affine,
    fold_batchnorm,
    fold_constants,
    fuse_activation,
    fuse_residual,
    remove_identity,
)

__all__ = ["PASSES", "Pass", "get_pass", "register", "run_pipeline", "GRAPH_PASSES", "dce",
           "fold_affine", "fold_batchnorm", "fold_constants", "fuse_activation",
           "fuse_residual", "remove_identity", "fuse_elementwise"]
