"""kdiqa: knowledge distillation for blind image quality assessment."""
__version__ = "0.1.0"
