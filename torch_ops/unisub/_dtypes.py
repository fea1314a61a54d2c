import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def result_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16/float32 inputs are computed in float32 and returned as float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
