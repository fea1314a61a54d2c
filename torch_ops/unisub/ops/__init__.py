"""The unisub operators: one module per op family, each registering its fake kernels and
exposing documented wrappers of torch.ops.unisub.*."""
from .decompositions import hosvd, lora_gram, mode_svd, orthonormalize, svd
from .gram import gram_update_, mode_gram
from .metrics import explained_variance, principal_angles, subspace_distance
from .projection import coefficients, project, project_, project_list_, reconstruct, subspace_energy

__all__ = ["mode_gram", "gram_update_",
           "svd", "orthonormalize", "lora_gram", "mode_svd", "hosvd",
           "project", "project_", "project_list_", "coefficients", "reconstruct", "subspace_energy",
           "principal_angles", "subspace_distance", "explained_variance"]
